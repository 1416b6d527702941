//! moco
