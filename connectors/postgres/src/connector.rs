//! The Postgres connector as the server sees it: [`PostgresConfig`] checks itself and builds a
//! [`PostgresSource`] from the runtime's [`Context`].

use tidings_connectors_core::{ConfigProblem, Connector, Context, OnPoison, Source};

use crate::config::PostgresConfig;
use crate::source::PostgresSource;

impl Connector for PostgresConfig {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn validate(&self) -> Result<(), ConfigProblem> {
        PostgresConfig::validate(self)
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
        Ok(Box::new(PostgresSource::from_context(ctx, self.clone())?))
    }
}
