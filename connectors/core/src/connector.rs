//! How a connector builds itself from what the runtime hands it, the way components are built
//! from a context in vector: the server knows connectors only through [`Connector`], which each
//! connector crate implements for its configuration type.
//!
//! Order: the server reads `[connectors.NAME]` into the connector's configuration, calls
//! [`Connector::validate`] and checks the channels the connector names (dead letter, then
//! [`Connector::own_channels`]) once, when the configuration is resolved; later the runtime,
//! once its metrics and status registry exist, calls [`Connector::build`] with a [`Context`]
//! and runs the [`Source`] it returns.

use crate::config::{ConfigProblem, OnPoison};
use crate::metrics::ConnectorMetrics;
use crate::status::StatusFields;
use crate::Source;

/// What the runtime hands a connector to build itself. The handles belong to the runtime of
/// one server: two servers in one process never see each other's connectors.
#[derive(Debug, Clone)]
pub struct Context {
    /// The connector's configured name: its checkpoint key, and its label in metrics.
    pub name: String,
    /// The dead-letter channel, resolved and checked by the server (`dead:NAME` by default).
    pub dead_letter: String,
    /// Where the connector reports its own fields of `GET /v1/connectors`.
    pub status: StatusFields,
    /// Where the connector registers and sets its own gauges, labelled with its name.
    pub metrics: ConnectorMetrics,
}

impl Context {
    /// A context whose handles nobody reads: for a connector built outside a server (tests,
    /// tools).
    pub fn detached(name: &str, dead_letter: &str) -> Self {
        Context {
            name: name.to_owned(),
            dead_letter: dead_letter.to_owned(),
            status: StatusFields::default(),
            metrics: ConnectorMetrics::detached(name),
        }
    }
}

/// One kind of connector, as its configuration: it checks itself, names the channels it writes
/// to besides its routed ones, and builds its [`Source`].
pub trait Connector: std::fmt::Debug + Send + Sync {
    /// The `type` it is configured under (`[connectors.NAME] type = "postgres"`), reported by
    /// `GET /v1/connectors`.
    fn kind(&self) -> &'static str;

    /// Check every setting; the first problem names its field, relative to the connector's
    /// table.
    fn validate(&self) -> Result<(), ConfigProblem>;

    /// The configured dead-letter channel; `None` leaves the server's default, `dead:NAME`.
    fn dead_letter(&self) -> Option<&str>;

    /// The other channels connector `name` writes to besides its routed ones, each with the
    /// field that sets it (`("control_channel", "postgres:orders")`), so that the server checks
    /// the names before anything starts.
    fn own_channels(&self, name: &str) -> Vec<(&'static str, String)>;

    /// What the runner does with a change that cannot become a message.
    fn on_poison(&self) -> OnPoison;

    /// Build the source, from a configuration [`Connector::validate`] accepted. A problem it
    /// still finds names its field as `validate` does.
    fn build(&self, ctx: Context) -> Result<Box<dyn Source>, ConfigProblem>;
}
