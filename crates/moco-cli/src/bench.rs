//! `moco bench data`: throughput of the two-view augmentation pipeline, per thread and with
//! the parallel loader, at 224 px from JPEG files and at 32 / 28 px from in-memory datasets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use moco_data::{
    bundled_fashion_mnist, formats::decode_image, ArrayDataset, AugmentConfig, ImageDataset,
    ImageFolder, Loader, LoaderConfig, Rng, Views,
};

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataBench {
    /// What was measured.
    pub pipeline: String,
    /// Threads used.
    pub threads: usize,
    /// Images processed.
    pub images: usize,
    /// Seconds.
    pub seconds: f64,
    /// Images per second (both views of an image count once).
    pub images_per_sec: f64,
    /// Images per second per thread.
    pub images_per_sec_per_thread: f64,
    /// With the loader: seconds until the first batch was ready (all threads build it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_batch_seconds: Option<f64>,
    /// The machine, the build and the date of the measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<moco_train::Machine>,
}

/// Writes `n` JPEG photos-like images of 500×375 (smooth gradients, texture, noise) to `dir`,
/// in `n / 64 + 1` class folders, unless they are there already.
pub fn make_jpegs(dir: &Path, n: usize) -> Result<(), String> {
    let mut rng = Rng::new(2024);
    for i in 0..n {
        let class = dir.join(format!("class{:02}", i / 64));
        std::fs::create_dir_all(&class).map_err(|e| format!("{}: {e}", class.display()))?;
        let path = class.join(format!("img{i:04}.JPEG"));
        if path.is_file() {
            continue;
        }
        let (fx, fy, phase) = (
            rng.range(0.005, 0.05),
            rng.range(0.005, 0.05),
            rng.range(0.0, std::f64::consts::TAU),
        );
        let base = [
            rng.range(40.0, 200.0),
            rng.range(40.0, 200.0),
            rng.range(40.0, 200.0),
        ];
        let img = image::RgbImage::from_fn(500, 375, |x, y| {
            let (x, y) = (x as f64, y as f64);
            let wave = 50.0 * ((x * fx + phase).sin() * (y * fy).cos());
            let px: Vec<u8> = (0..3)
                .map(|c| {
                    let noise = ((x * 12.9898 + y * 78.233 + c as f64 * 37.719).sin() * 43758.5453)
                        .fract()
                        * 24.0;
                    (base[c] + wave * (1.0 - 0.3 * c as f64) + noise + x * 0.1).clamp(0.0, 255.0)
                        as u8
                })
                .collect();
            image::Rgb([px[0], px[1], px[2]])
        });
        img.save_with_format(&path, image::ImageFormat::Jpeg)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn single_thread(
    name: &str,
    ds: &dyn ImageDataset,
    aug: &AugmentConfig,
    n: usize,
) -> Result<DataBench, String> {
    let n = n.min(ds.len());
    // One warm-up pass over a few images.
    for i in 0..n.min(8) {
        let s = ds.get(i).map_err(|e| e.to_string())?;
        let _ = aug.two_views(&s.image, 0, 0, i as u64);
    }
    let started = Instant::now();
    for i in 0..n {
        let s = ds.get(i).map_err(|e| e.to_string())?;
        let (a, b) = aug.two_views(&s.image, 0, 1, i as u64);
        std::hint::black_box((a, b));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(DataBench {
        pipeline: name.into(),
        threads: 1,
        images: n,
        seconds,
        images_per_sec: n as f64 / seconds,
        images_per_sec_per_thread: n as f64 / seconds,
        first_batch_seconds: None,
        machine: None,
    })
}

fn with_loader(
    name: &str,
    ds: Arc<dyn ImageDataset>,
    aug: AugmentConfig,
    threads: usize,
) -> Result<DataBench, String> {
    let mut cfg = LoaderConfig::train(LOADER_BATCH.min(ds.len()), 0);
    cfg.workers = threads;
    let loader = Loader::new(ds, Views::Two(Arc::new(aug)), cfg).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (mut images, mut first) = (0, None);
    for batch in loader.epoch(0, 0) {
        images += batch.map_err(|e| e.to_string())?.shape[0];
        first.get_or_insert(started.elapsed().as_secs_f64());
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(DataBench {
        pipeline: name.into(),
        threads,
        images,
        seconds,
        images_per_sec: images as f64 / seconds,
        images_per_sec_per_thread: images as f64 / seconds / threads as f64,
        first_batch_seconds: first,
        machine: None,
    })
}

/// Batch size of the loader measurements.
const LOADER_BATCH: usize = 64;

/// Runs every data benchmark. `jpeg_dir` holds (or receives) the JPEG set; the loader is
/// measured with 1, 2 and `threads` worker threads (up to `threads`).
pub fn bench_data(jpeg_dir: &Path, jpegs: usize, threads: usize) -> Result<Vec<DataBench>, String> {
    make_jpegs(jpeg_dir, jpegs)?;
    let folder = ImageFolder::open(jpeg_dir, 3).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let imagenet = AugmentConfig::imagenet(0.08);
    // Decoding alone, for reference.
    let started = Instant::now();
    for i in 0..folder.len() {
        std::hint::black_box(
            decode_image(folder.path(i).expect("listed"), 3).map_err(|e| e.to_string())?,
        );
    }
    let secs = started.elapsed().as_secs_f64();
    out.push(DataBench {
        pipeline: "jpeg 500x375 decode only".into(),
        threads: 1,
        images: folder.len(),
        seconds: secs,
        images_per_sec: folder.len() as f64 / secs,
        images_per_sec_per_thread: folder.len() as f64 / secs,
        first_batch_seconds: None,
        machine: None,
    });
    out.push(single_thread(
        "jpeg 500x375 -> two views 224 (MoCo v3 ImageNet)",
        &folder,
        &imagenet,
        jpegs,
    )?);
    let mut rng = Rng::new(7);
    let n = 4096;
    let pixels: Vec<u8> = (0..n * 3 * 32 * 32).map(|_| rng.below(256) as u8).collect();
    let cifar = ArrayDataset::new(
        "synthetic CIFAR",
        (3, 32, 32),
        pixels,
        vec![0; n],
        vec!["x".into()],
    )
    .map_err(|e| e.to_string())?;
    out.push(single_thread(
        "cifar 32 -> two views 32 (CIFAR preset)",
        &cifar,
        &AugmentConfig::cifar(false),
        n,
    )?);
    let (fmnist, _) = bundled_fashion_mnist().map_err(|e| e.to_string())?;
    out.push(single_thread(
        "idx 28 -> two views 28 (Fashion-MNIST preset)",
        fmnist.as_ref(),
        &AugmentConfig::fashion_mnist(28, 0.2),
        n,
    )?);
    let folder: Arc<dyn ImageDataset> = Arc::new(folder);
    let mut counts = vec![1, 2, threads];
    counts.sort_unstable();
    counts.dedup();
    for t in counts.into_iter().filter(|&t| t <= threads) {
        let name = format!("jpeg 500x375 -> two views 224, loader, batch {LOADER_BATCH}");
        out.push(with_loader(&name, folder.clone(), imagenet.clone(), t)?);
    }
    let machine = moco_train::Machine::here().with_features(&crate::device::build_features());
    for r in &mut out {
        r.machine = Some(machine.clone());
    }
    Ok(out)
}

/// The default folder of the JPEG set.
pub fn default_jpeg_dir() -> PathBuf {
    std::env::temp_dir().join("moco-bench-jpegs")
}
