//! The process's one tracing setup: plain or JSON lines, filtered like `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter given.
        filter: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("logging is already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// The filter to use: `filter` if given, else `RUST_LOG`, else `info`.
pub fn filter(filter: Option<&str>) -> Result<EnvFilter, Error> {
    let spec = match filter {
        Some(f) => f.to_owned(),
        None => std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| "info".to_owned()),
    };
    EnvFilter::try_new(&spec).map_err(|source| Error::Filter {
        filter: spec,
        source,
    })
}

/// Installs the global subscriber writing to stderr.
pub fn init(format: LogFormat, filter_spec: Option<&str>) -> Result<(), Error> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = filter(filter_spec)?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_say_why() {
        assert!(filter(Some("info,rota_coordinator=debug")).is_ok());
        let err = filter(Some("info,=nonsense=")).unwrap_err();
        assert!(err.to_string().contains("invalid log filter"), "{err}");
    }
}
