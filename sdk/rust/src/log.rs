//! Logging into the host's log (the host caps the size and number of lines). Without a kind
//! feature (e.g. in a native unit test of plugin logic) the functions do nothing.

#[allow(unused_macros)]
macro_rules! level_of {
    ($l:ident, $level:expr) => {
        match $level {
            0 => $l::Level::Trace,
            1 => $l::Level::Debug,
            2 => $l::Level::Info,
            3 => $l::Level::Warn,
            _ => $l::Level::Error,
        }
    };
}

fn emit(level: u8, message: &str) {
    let _ = (level, message);
    #[cfg(all(target_family = "wasm", feature = "reward"))]
    {
        use crate::reward::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
    #[cfg(all(target_family = "wasm", feature = "data-loader"))]
    {
        use crate::data_loader::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
    #[cfg(all(target_family = "wasm", feature = "evaluator"))]
    {
        use crate::evaluator::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
    #[cfg(all(target_family = "wasm", feature = "recipe"))]
    {
        use crate::recipe::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
    #[cfg(all(target_family = "wasm", feature = "tool"))]
    {
        use crate::tool::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
    #[cfg(all(target_family = "wasm", feature = "environment"))]
    {
        use crate::environment::bindings::galley::plugin::log as l;
        l::log(level_of!(l, level), message);
    }
}

pub fn trace(message: &str) {
    emit(0, message)
}
pub fn debug(message: &str) {
    emit(1, message)
}
pub fn info(message: &str) {
    emit(2, message)
}
pub fn warn(message: &str) {
    emit(3, message)
}
pub fn error(message: &str) {
    emit(4, message)
}
