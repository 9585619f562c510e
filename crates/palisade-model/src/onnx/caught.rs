//! Panics inside the engines, turned into errors.
//!
//! tract panics on some malformed graphs (an `Unsqueeze` whose axes pass the rank, with tract-hir
//! 0.23.9), and the interpreter's tensor backend could on an operand shape its plan failed to
//! check. A model file is untrusted input, so every call into either runs inside [`catch`],
//! which returns such a panic as an error. The panic hook still runs first: a program calls
//! [`quiet_caught_panics`] so that its hook does not print, as if it had crashed, a panic that
//! its caller will get as an error (or asks [`panic_is_caught`] in a hook of its own).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use super::OnnxError;

thread_local! {
    /// How many [`catch`] calls the current thread is inside.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on the current thread now would be caught by palisade-model and returned as
/// an [`OnnxError`] (the thread is inside a call to tract or to the interpreter's backend).
pub fn panic_is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Wraps the panic hook installed now (the default one, libFuzzer's, …) so that it is not called
/// for panics [`catch`] turns into errors ([`panic_is_caught`]); every other panic reaches it as
/// before. Call it once, after any hook of the program's own is installed.
pub fn quiet_caught_panics() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !panic_is_caught() {
            hook(info);
        }
    }));
}

/// Runs `f`; a panic inside it becomes the error `wrap` makes of the panic's message.
pub(crate) fn catch<T>(
    f: impl FnOnce() -> Result<T, OnnxError>,
    wrap: impl FnOnce(String) -> OnnxError,
) -> Result<T, OnnxError> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let out = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    out.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".into());
        Err(wrap(msg))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_and_the_thread_says_so_only_while_inside() {
        assert!(!panic_is_caught());
        let err = catch(
            || -> Result<(), OnnxError> {
                assert!(panic_is_caught());
                let inner = catch(|| Ok(panic_is_caught()), OnnxError::Runtime);
                assert!(matches!(inner, Ok(true)));
                assert!(panic_is_caught(), "still inside the outer call");
                panic!("bad axes")
            },
            OnnxError::Runtime,
        )
        .unwrap_err();
        assert!(matches!(err, OnnxError::Runtime(m) if m == "bad axes"));
        assert!(!panic_is_caught());
        assert!(matches!(catch(|| Ok(3), OnnxError::Runtime), Ok(3)));
    }
}
