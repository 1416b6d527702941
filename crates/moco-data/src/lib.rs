//! Datasets (IDX, CIFAR binary, image folders) and MoCo v3's two-view augmentation pipeline.
//!
//! The datasets and augmentations are being written; this crate currently exports nothing.
