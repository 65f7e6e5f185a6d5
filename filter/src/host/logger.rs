//! The `log` crate's logger, writing to Envoy's log through `proxy_log` directly: the SDK's
//! logger unwraps the host's status (a panic would trap the VM). Envoy's level is followed,
//! so lines Envoy would drop are not even formatted.

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // proxy-wasm's levels: trace 0, debug 1, info 2, warn 3, error 4.
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        let message = record.args().to_string();
        // SAFETY: the host reads `message` during the call; a failed log line is dropped.
        unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }

    fn flush(&self) {}
}

/// Installs the logger at `info` (once per VM, from `_initialize`, where Envoy allows no
/// host calls; `follow_host_level` runs once the plugin is configured).
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Takes Envoy's current log level for this module's lines.
pub fn follow_host_level() {
    let mut level = 0;
    // SAFETY: the host writes one integer.
    if unsafe { proxy_get_log_level(&mut level) } != 0 {
        return;
    }
    log::set_max_level(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    });
}
