//! Log lines in the reference system's shape, `[2025-12-30 16:12:06] INFO: message`, on
//! standard error, with librdkafka's own log routed through the same filter.

use std::fmt;
use std::time::SystemTime;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

struct ReferenceFormat;

impl<S, N> FormatEvent<S, N> for ReferenceFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let now = now.trim_end_matches('Z').replacen('T', " ", 1);
        write!(writer, "[{now}] {}: ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the global subscriber. `filter` is a level or `EnvFilter` directives.
pub fn init(filter: &str) -> Result<(), String> {
    // librdkafka repeats connection failures many times a second; ebb reports those itself.
    // PostgreSQL's notices ("relation already exists, skipping") are not news either.
    let directives = format!("librdkafka=error,rdkafka=error,tokio_postgres=warn,{filter}");
    let filter = EnvFilter::try_new(&directives).map_err(|e| e.to_string())?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(ReferenceFormat)
        .try_init()
        .map_err(|e| e.to_string())
}
