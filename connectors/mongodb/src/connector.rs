//! The MongoDB connector as the server sees it: [`MongoConfig`] checks itself and builds a
//! [`MongoSource`] from the runtime's [`Context`].

use tidings_connectors_core::{ConfigProblem, Connector, Context, OnPoison, Source};

use crate::config::MongoConfig;
use crate::source::MongoSource;

impl Connector for MongoConfig {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn validate(&self) -> Result<(), ConfigProblem> {
        MongoConfig::validate(self)
    }

    fn dead_letter(&self) -> Option<&str> {
        self.dead_letter.as_deref()
    }

    fn own_channels(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![("control_channel", self.control_channel(name))]
    }

    fn on_poison(&self) -> OnPoison {
        self.on_poison
    }

    fn build(&self, ctx: Context) -> Result<Box<dyn Source>, ConfigProblem> {
        let control = self.control_channel(&ctx.name);
        Ok(Box::new(MongoSource::prepared(
            ctx.name,
            self.clone(),
            &ctx.dead_letter,
            &control,
        )?))
    }
}
