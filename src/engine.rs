//! Engine presets.
