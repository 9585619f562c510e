//! Model runtimes behind the `palisade-core` classifier abstraction.
#![forbid(unsafe_code)]
