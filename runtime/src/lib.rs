//! natkit-runtime (being written)
