//! Formats, bad input, augmentation semantics, loader determinism.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moco_data::formats::{parse_idx, read_cifar, read_idx, Cifar};
use moco_data::transforms::*;
use moco_data::*;

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn img(channels: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Image {
    let mut i = Image::zeros(channels, h, w);
    for c in 0..channels {
        for y in 0..h {
            for x in 0..w {
                i.data[(c * h + y) * w + x] = f(c, y, x);
            }
        }
    }
    i
}

#[test]
fn idx_plain_and_gzip() {
    let t = Tmp::new("idx");
    let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| i as u8 * 20).collect();
    std::fs::write(t.path("img"), idx_bytes(&[3, 2, 2], &pixels)).unwrap();
    std::fs::write(t.path("lab.gz"), gz(&idx_bytes(&[3], &[2, 0, 1]))).unwrap();
    let ds = read_idx(&t.path("img"), &t.path("lab.gz"), "tiny", None).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.classes().len(), 3);
    let s = ds.get(1).unwrap();
    assert_eq!(s.label, 0);
    assert_eq!(
        s.image.data,
        vec![80.0 / 255.0, 100.0 / 255.0, 120.0 / 255.0, 140.0 / 255.0]
    );
}

#[test]
fn idx_bad_input_is_named() {
    let t = Tmp::new("idxbad");
    let good_img = idx_bytes(&[2, 2, 2], &[0; 8]);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "magic",
            vec![1, 2, 3, 4, 0, 0],
            idx_bytes(&[2], &[0, 1]),
            "wrong magic number",
        ),
        (
            "truncated",
            idx_bytes(&[2, 2, 2], &[0; 5]),
            idx_bytes(&[2], &[0, 1]),
            "truncated",
        ),
        (
            "counts",
            good_img.clone(),
            idx_bytes(&[3], &[0, 1, 1]),
            "3 labels for 2 images",
        ),
        ("empty", vec![], idx_bytes(&[2], &[0, 1]), "too short"),
        (
            "dims",
            idx_bytes(&[8], &[0; 8]),
            idx_bytes(&[2], &[0, 1]),
            "expected [count, rows, cols]",
        ),
        (
            "type",
            vec![0, 0, 0x0d, 1, 0, 0, 0, 0],
            idx_bytes(&[2], &[0, 1]),
            "not unsigned bytes",
        ),
        (
            "gzip",
            vec![0x1f, 0x8b, 1, 2, 3],
            idx_bytes(&[2], &[0, 1]),
            "corrupt gzip",
        ),
    ];
    for (name, images, labels, expect) in cases {
        let (ip, lp) = (
            t.path(&format!("{name}-img")),
            t.path(&format!("{name}-lab")),
        );
        std::fs::write(&ip, images).unwrap();
        std::fs::write(&lp, labels).unwrap();
        let err = read_idx(&ip, &lp, name, None).unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains(name), "{name}: {err}");
    }
    let err = read_idx(&t.path("absent"), &t.path("absent2"), "x", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent") && err.contains("cannot read"),
        "{err}"
    );
    // A missing split names what is missing.
    let err = open_dataset(&t.0, Some(DatasetKind::Mnist), Split::Train)
        .err()
        .expect("a missing split is an error")
        .to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn cifar_readers_and_errors() {
    let t = Tmp::new("cifar");
    let mut rec = vec![7u8];
    rec.extend((0..3072).map(|i| (i % 256) as u8));
    std::fs::write(
        t.path("test_batch.bin"),
        [rec.clone(), rec.clone()].concat(),
    )
    .unwrap();
    std::fs::write(t.path("batches.meta.txt"), "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n").unwrap();
    let (kind, dir) = detect(&t.0).unwrap();
    assert_eq!(kind, DatasetKind::Cifar10);
    let ds = read_cifar(&dir, Cifar::Ten, Split::Test).unwrap();
    assert_eq!((ds.len(), ds.channels()), (2, 3));
    assert_eq!(ds.classes()[7], "h");
    let s = ds.get(0).unwrap();
    assert_eq!(s.label, 7);
    assert_eq!(
        (s.image.at(0, 0, 1), s.image.at(1, 0, 0)),
        (1.0 / 255.0, 0.0)
    );
    // The train split is missing; a truncated file; a label out of range.
    let err = read_cifar(&dir, Cifar::Ten, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(t.path("test_batch.bin"), &rec[..1000]).unwrap();
    let err = read_cifar(&dir, Cifar::Ten, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test_batch.bin") && err.contains("truncated"),
        "{err}"
    );
    rec[0] = 12;
    std::fs::write(t.path("test_batch.bin"), &rec).unwrap();
    let err = read_cifar(&dir, Cifar::Ten, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 12"), "{err}");
    // CIFAR-100: coarse and fine labels.
    let mut rec100 = vec![3u8, 42];
    rec100.extend(std::iter::repeat_n(9u8, 3072));
    std::fs::write(t.path("test.bin"), &rec100).unwrap();
    let ds = read_cifar(&dir, Cifar::Hundred, Split::Test).unwrap();
    assert_eq!((ds.get(0).unwrap().label, ds.classes().len()), (42, 100));
}

fn write_png(path: &Path, value: u8) {
    let buf = ::image::RgbImage::from_pixel(12, 10, ::image::Rgb([value, value / 2, 255 - value]));
    buf.save(path).unwrap();
}

#[test]
fn image_folder_labels_extensions_and_bad_files() {
    let t = Tmp::new("folder");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(t.path(class)).unwrap();
    }
    write_png(&t.path("cat/a.png"), 10);
    write_png(&t.path("cat/b.PNG"), 20);
    write_png(&t.path("dog/c.png"), 30);
    std::fs::write(t.path("dog/broken.JPEG"), b"not a jpeg at all").unwrap();
    std::fs::write(t.path("dog/empty.jpg"), b"").unwrap();
    std::fs::write(t.path("dog/notes.txt"), b"ignored").unwrap();
    let ds: Arc<dyn ImageDataset> = Arc::new(ImageFolder::open(&t.0, 3).unwrap());
    assert_eq!(ds.classes(), vec!["cat", "dog"]);
    assert_eq!(ds.len(), 5);
    let labels: Vec<_> = (0..5)
        .map(|i| (ds.source(i), ds.get(i).map(|s| s.label)))
        .collect();
    assert_eq!(labels[0].1.as_ref().unwrap(), &0);
    assert_eq!(labels[1].1.as_ref().unwrap(), &0);
    let broken = labels
        .iter()
        .find(|(s, _)| s.ends_with("broken.JPEG"))
        .unwrap();
    assert!(broken
        .1
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("cannot decode"));
    let empty = labels
        .iter()
        .find(|(s, _)| s.ends_with("empty.jpg"))
        .unwrap();
    assert!(empty
        .1
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("empty file"));

    // The loader skips and counts unreadable images, keeps batches full, and never mislabels.
    let aug = Arc::new(AugmentConfig::cifar(false));
    let mut cfg = LoaderConfig::eval(5);
    cfg.workers = 0;
    let loader = Loader::new(ds.clone(), Views::Eval(aug.clone()), cfg.clone()).unwrap();
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(batch.shape, [5, 3, 32, 32]);
    for (&i, &label) in batch.indices.iter().zip(&batch.labels) {
        assert_eq!(ds.get(i).unwrap().label, label);
    }
    assert_eq!(loader.stats().skipped(), 2);
    // --strict stops instead.
    cfg.strict = true;
    let loader = Loader::new(ds, Views::Eval(aug), cfg).unwrap();
    assert!(loader.epoch(0, 0).next().unwrap().is_err());

    // An empty class folder is an error naming it.
    std::fs::create_dir_all(t.path("zebra")).unwrap();
    let err = ImageFolder::open(&t.0, 3).unwrap_err().to_string();
    assert!(err.contains("zebra") && err.contains("no images"), "{err}");
}

#[test]
fn pixel_ops_match_hand_computation() {
    let rgb = img(3, 1, 2, |c, _, x| [0.2, 0.6, 1.0][c] * (x + 1) as f32 / 2.0);
    let mut g = rgb.clone();
    grayscale(&mut g);
    let l = 0.299 * 0.1 + 0.587 * 0.3 + 0.114 * 0.5;
    assert!((g.at(0, 0, 0) - l).abs() < 1e-6 && (g.at(2, 0, 0) - l).abs() < 1e-6);
    let mut s = img(1, 1, 3, |_, _, x| [0.2, 0.5, 0.9][x]);
    solarize(&mut s, 128.0 / 255.0);
    assert_eq!(s.data, vec![0.2, 0.5, 1.0 - 0.9]);
    let mut f = img(1, 2, 3, |_, y, x| (y * 3 + x) as f32);
    hflip(&mut f);
    assert_eq!(f.data, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
    let mut n = img(2, 1, 1, |c, _, _| [0.5, 0.25][c]);
    normalize(&mut n, &[0.5, 0.0], &[0.25, 0.5]);
    assert_eq!(n.data, vec![0.0, 0.5]);
    // Factor 1 is the identity for every jitter, and hue 0 too.
    let orig = img(3, 4, 5, |c, y, x| ((c * 7 + y * 3 + x) % 11) as f32 / 10.0);
    let mut j = orig.clone();
    adjust_brightness(&mut j, 1.0);
    adjust_contrast(&mut j, 1.0);
    adjust_saturation(&mut j, 1.0);
    adjust_hue(&mut j, 0.0);
    assert_eq!(j, orig);
    // A full hue turn comes back (up to rounding); brightness clamps; contrast 0 is the mean.
    let mut h = orig.clone();
    adjust_hue(&mut h, 0.5);
    adjust_hue(&mut h, 0.5);
    assert!(h
        .data
        .iter()
        .zip(&orig.data)
        .all(|(a, b)| (a - b).abs() < 1e-5));
    let mut b = orig.clone();
    adjust_brightness(&mut b, 2.0);
    assert!(b.data.iter().all(|v| (0.0..=1.0).contains(v)));
    let mut c = img(1, 1, 4, |_, _, x| x as f32 / 4.0);
    adjust_contrast(&mut c, 0.0);
    assert!(c.data.iter().all(|v| (v - 0.375).abs() < 1e-6));
    // Hue: pure red shifted by 1/3 turn is pure green.
    let mut red = img(3, 1, 1, |c, _, _| if c == 0 { 1.0 } else { 0.0 });
    adjust_hue(&mut red, 1.0 / 3.0);
    assert!(
        (red.data[0]).abs() < 1e-6 && (red.data[1] - 1.0).abs() < 1e-6 && red.data[2].abs() < 1e-6
    );
}

#[test]
fn blur_and_resize_keep_constants_and_resize_is_exact_at_identity() {
    let mut k = img(3, 9, 7, |_, _, _| 0.3);
    gaussian_blur(&mut k, 1.7);
    assert!(k.data.iter().all(|v| (v - 0.3).abs() < 1e-6));
    let ramp = img(1, 6, 8, |_, y, x| (y * 8 + x) as f32 / 48.0);
    let same = resized_crop(
        &ramp,
        CropBox {
            top: 0,
            left: 0,
            height: 6,
            width: 8,
        },
        6,
        8,
    );
    assert!(same
        .data
        .iter()
        .zip(&ramp.data)
        .all(|(a, b)| (a - b).abs() < 1e-6));
    let k = img(1, 20, 30, |_, _, _| 0.7);
    let small = resized_crop(
        &k,
        CropBox {
            top: 2,
            left: 3,
            height: 15,
            width: 20,
        },
        7,
        5,
    );
    assert!(small.data.iter().all(|v| (v - 0.7).abs() < 1e-6));
    // Downscaling by 2 averages (antialiased): a checkerboard becomes flat grey.
    let checker = img(1, 8, 8, |_, y, x| ((x + y) % 2) as f32);
    let half = resized_crop(
        &checker,
        CropBox {
            top: 0,
            left: 0,
            height: 8,
            width: 8,
        },
        4,
        4,
    );
    assert!(
        half.data.iter().all(|v| (v - 0.5).abs() < 0.13),
        "{:?}",
        half.data
    );
    // Eval transform: shorter side, then centre crop.
    let wide = img(1, 10, 20, |_, _, x| x as f32);
    let e = resize_center_crop(&wide, 10, 10);
    assert_eq!((e.height, e.width), (10, 10));
    assert_eq!(e.at(0, 0, 0), 5.0);
}

#[test]
fn crop_boxes_stay_inside_torchvision_bounds() {
    let mut rng = Rng::new(1);
    for i in 0..5000 {
        let (h, w) = (20 + i % 50, 15 + (i * 7) % 60);
        let b = sample_crop(&mut rng, h, w, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
        assert!(
            b.height >= 1 && b.width >= 1 && b.top + b.height <= h && b.left + b.width <= w,
            "{b:?} in {h}x{w}"
        );
    }
    // Scale (1, 1) with a square image: the whole image.
    let b = sample_crop(&mut rng, 32, 32, (1.0, 1.0), (1.0, 1.0));
    assert_eq!(
        b,
        CropBox {
            top: 0,
            left: 0,
            height: 32,
            width: 32
        }
    );
    // Fallback: an impossible ratio gives the centre crop clamped to the ratio bounds.
    let b = sample_crop(&mut rng, 10, 100, (0.99, 1.0), (1.0, 1.0));
    assert_eq!((b.height, b.width), (10, 10));
    assert_eq!(b.left, 45);
}

#[test]
fn views_are_deterministic_whatever_the_thread_count() {
    let (train, _) = bundled_fashion_mnist().unwrap();
    let aug = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
    let run = |workers: usize| {
        let mut cfg = LoaderConfig::train(16, 42);
        cfg.workers = workers;
        let loader = Loader::new(train.clone(), Views::Two(aug.clone()), cfg).unwrap();
        loader
            .epoch(3, 0)
            .take(3)
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (run(0), run(1), run(3));
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.indices, z.indices);
        assert_eq!(x.views, y.views);
        assert_eq!(x.views, z.views);
    }
    // The two views differ, and a later epoch reorders.
    assert_ne!(a[0].views[0], a[0].views[1]);
    let mut cfg = LoaderConfig::train(16, 42);
    cfg.workers = 0;
    let loader = Loader::new(train.clone(), Views::Two(aug), cfg).unwrap();
    assert_ne!(loader.order(3), loader.order(4));
    // Starting mid-epoch gives the same batches as reading up to there.
    let resumed = loader.epoch(3, 2).next().unwrap().unwrap();
    assert_eq!(resumed.indices, a[2].indices);
    assert_eq!(resumed.views, a[2].views);
}

#[test]
fn shards_and_workers_see_the_same_views_as_one_loader() {
    let (train, _) = bundled_fashion_mnist().unwrap();
    let aug = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
    let batches = |workers: usize, shard: Shard| {
        let mut cfg = LoaderConfig::train(24, 7);
        cfg.workers = workers;
        cfg.prefetch = 1;
        cfg.shard = shard;
        let loader = Loader::new(train.clone(), Views::Two(aug.clone()), cfg).unwrap();
        assert_eq!(loader.shard_size(), 24 / shard.world);
        let from_second = loader.epoch(1, 1).take(3).map(|b| b.unwrap());
        from_second.collect::<Vec<_>>()
    };
    let whole = batches(0, Shard::WHOLE);
    for workers in [0, 1, 2, 5] {
        for world in [1, 2, 3, 4] {
            let shards: Vec<Vec<Batch>> = (0..world)
                .map(|rank| batches(workers, Shard { rank, world }))
                .collect();
            for (b, expected) in whole.iter().enumerate() {
                // The replicas' slices, in rank order, are the global batch.
                let mut joined = shards[0][b].clone();
                for shard in &shards[1..] {
                    joined.append(shard[b].clone()).unwrap();
                }
                let case = format!("{workers} workers, {world} replicas, batch {b}");
                assert_eq!(shards[world - 1][b].shape[0], 24 / world, "{case}");
                assert_eq!(joined.shape, expected.shape, "{case}");
                assert_eq!(joined.indices, expected.indices, "{case}");
                assert_eq!(joined.labels, expected.labels, "{case}");
                assert_eq!(joined.views, expected.views, "{case}");
            }
        }
    }
}

/// A dataset that counts the samples read.
struct Counted(Arc<dyn ImageDataset>, Arc<std::sync::atomic::AtomicUsize>);

impl ImageDataset for Counted {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.get(index)
    }
    fn classes(&self) -> Vec<String> {
        self.0.classes()
    }
    fn channels(&self) -> usize {
        self.0.channels()
    }
    fn source(&self, index: usize) -> String {
        self.0.source(index)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[test]
fn workers_stay_within_the_prefetch_window() {
    let (train, _) = bundled_fashion_mnist().unwrap();
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::new(Counted(train, read.clone()));
    let aug = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
    let mut cfg = LoaderConfig::train(16, 3);
    (cfg.workers, cfg.prefetch) = (3, 2);
    let loader = Loader::new(counted, Views::Two(aug), cfg).unwrap();
    let mut batches = loader.epoch(0, 0);
    batches.next().unwrap().unwrap();
    // The loop holds batch 0; the workers may prepare batches 1 and 2, no further.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let samples = read.load(std::sync::atomic::Ordering::SeqCst);
    assert!((16..=3 * 16).contains(&samples), "{samples} samples read");
    drop(batches); // returns although workers wait at the window
}

#[test]
fn a_shard_that_cannot_split_the_batch_is_refused() {
    let (train, _) = bundled_fashion_mnist().unwrap();
    let aug = Arc::new(AugmentConfig::fashion_mnist(28, 0.2));
    let refused = |shard: Shard, drop_last: bool| {
        let mut cfg = LoaderConfig::train(24, 7);
        cfg.shard = shard;
        cfg.drop_last = drop_last;
        match Loader::new(train.clone(), Views::Two(aug.clone()), cfg) {
            Ok(_) => panic!("{shard:?} accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(Shard { rank: 0, world: 5 }, true);
    assert!(e.contains("shard 0 of 5") && e.contains("24"), "{e}");
    let e = refused(Shard { rank: 2, world: 2 }, true);
    assert!(e.contains("shard 2 of 2"), "{e}");
    let e = refused(Shard { rank: 0, world: 0 }, true);
    assert!(e.contains("shard 0 of 0"), "{e}");
    let e = refused(Shard { rank: 0, world: 2 }, false);
    assert!(e.contains("drop_last"), "{e}");
}

#[test]
fn bundled_fashion_mnist_is_split_without_overlap() {
    let (train, eval) = bundled_fashion_mnist().unwrap();
    assert_eq!((train.len(), eval.len()), (8000, 2000));
    assert_eq!(train.classes()[9], "Ankle boot");
    let s = train.get(0).unwrap();
    assert_eq!(
        (s.image.channels, s.image.height, s.image.width),
        (1, 28, 28)
    );
    let mut counts = [0usize; 10];
    for i in 0..eval.len() {
        counts[eval.get(i).unwrap().label] += 1;
    }
    assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn idx_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let _ = parse_idx(&bytes);
        let mut header = vec![0u8, 0, 8];
        header.extend_from_slice(&bytes);
        let _ = parse_idx(&header);
    }

    #[test]
    fn cifar_reader_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8000)) {
        let t = Tmp::new(&format!("fuzz{}", bytes.len()));
        std::fs::write(t.path("test_batch.bin"), &bytes).unwrap();
        let _ = read_cifar(&t.0, Cifar::Ten, Split::Test);
        std::fs::write(t.path("test.bin"), &bytes).unwrap();
        let _ = read_cifar(&t.0, Cifar::Hundred, Split::Test);
    }
}

/// Straightforward separable blur with reflected edges, the reference for the fast one.
fn naive_blur(img: &Image, sigma: f32) -> Image {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    let reflect = |i: isize, n: isize| -> usize {
        if n == 1 {
            return 0;
        }
        let p = 2 * (n - 1);
        let m = i.rem_euclid(p);
        (if m < n { m } else { p - m }) as usize
    };
    let (h, w) = (img.height as isize, img.width as isize);
    let mut tmp = img.clone();
    let mut out = img.clone();
    for c in 0..img.channels {
        for y in 0..h {
            for x in 0..w {
                let v: f32 = (-r..=r)
                    .map(|d| k[(d + r) as usize] / s * img.at(c, y as usize, reflect(x + d, w)))
                    .sum();
                tmp.data[(c * img.height + y as usize) * img.width + x as usize] = v;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let v: f32 = (-r..=r)
                    .map(|d| k[(d + r) as usize] / s * tmp.at(c, reflect(y + d, h), x as usize))
                    .sum();
                out.data[(c * img.height + y as usize) * img.width + x as usize] = v;
            }
        }
    }
    out
}

#[test]
fn fast_blur_matches_the_reference() {
    for (h, w, sigma) in [(7, 9, 1.3f32), (3, 2, 2.0), (1, 5, 0.7), (16, 11, 0.1)] {
        let orig = img(3, h, w, |c, y, x| {
            ((c * 31 + y * 7 + x * 13) % 17) as f32 / 16.0
        });
        let mut fast = orig.clone();
        gaussian_blur(&mut fast, sigma);
        let slow = naive_blur(&orig, sigma);
        let err = fast
            .data
            .iter()
            .zip(&slow.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "{h}x{w} sigma {sigma}: {err}");
    }
}

/// PIL's antialiased bilinear resize of a crop written as one 2-D sum per output pixel, the
/// reference for the separable, padded-weight implementation.
fn naive_resized_crop(img: &Image, b: CropBox, oh: usize, ow: usize) -> Image {
    let weights = |in_len: usize, out_len: usize, o: usize| -> Vec<(usize, f64)> {
        let scale = in_len as f64 / out_len as f64;
        let support = scale.max(1.0);
        let center = (o as f64 + 0.5) * scale;
        let w: Vec<(usize, f64)> = (0..in_len)
            .map(|i| {
                let d = ((i as f64 + 0.5 - center) / support).abs();
                (i, (1.0 - d).max(0.0))
            })
            .filter(|&(_, w)| w > 0.0)
            .collect();
        let s: f64 = w.iter().map(|x| x.1).sum();
        w.into_iter().map(|(i, x)| (i, x / s)).collect()
    };
    let mut out = Image::zeros(img.channels, oh, ow);
    for c in 0..img.channels {
        for y in 0..oh {
            for x in 0..ow {
                let mut v = 0f64;
                for (i, wy) in weights(b.height, oh, y) {
                    for (j, wx) in weights(b.width, ow, x) {
                        v += wy * wx * img.at(c, b.top + i, b.left + j) as f64;
                    }
                }
                out.data[(c * oh + y) * ow + x] = v as f32;
            }
        }
    }
    out
}

#[test]
fn resized_crop_matches_the_reference() {
    let src = img(3, 37, 53, |c, y, x| {
        ((c * 29 + y * 11 + x * 7) % 23) as f32 / 22.0
    });
    let mut rng = Rng::for_sample(3, 0, 0, 1);
    for (oh, ow) in [(16, 16), (40, 40), (7, 12), (53, 37)] {
        for _ in 0..10 {
            let b = sample_crop(&mut rng, 37, 53, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
            let fast = resized_crop(&src, b, oh, ow);
            let slow = naive_resized_crop(&src, b, oh, ow);
            let err = fast
                .data
                .iter()
                .zip(&slow.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{b:?} -> {oh}x{ow}: {err}");
        }
    }
}

/// torchvision's hue adjustment through HSV in f64 (the `colorsys` formulas), one pixel.
fn naive_hue(r: f64, g: f64, b: f64, shift: f64) -> [f64; 3] {
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return [r, g, b];
    }
    let (v, s, d) = (max, (max - min) / max, max - min);
    let (rc, gc, bc) = ((max - r) / d, (max - g) / d, (max - b) / d);
    let h = if r == max {
        bc - gc
    } else if g == max {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = ((h / 6.0).rem_euclid(1.0) + shift).rem_euclid(1.0);
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[test]
fn colour_jitter_matches_per_pixel_references() {
    let src = img(3, 9, 13, |c, y, x| {
        ((c * 37 + y * 17 + x * 5) % 31) as f32 / 30.0
    });
    let n = src.plane();
    for shift in [-0.5f32, -0.31, -0.02, 0.0, 0.07, 0.25, 0.5] {
        let mut fast = src.clone();
        adjust_hue(&mut fast, shift);
        for p in 0..n {
            let [r, g, b] = [0, 1, 2].map(|c| src.data[c * n + p] as f64);
            let want = naive_hue(r, g, b, shift as f64);
            for (c, w) in want.into_iter().enumerate() {
                let got = fast.data[c * n + p] as f64;
                assert!(
                    (got - w).abs() < 1e-5,
                    "hue {shift}, pixel {p}: {got} vs {w}"
                );
            }
        }
    }
    for factor in [0.0f32, 0.8, 1.2] {
        let mut fast = src.clone();
        adjust_saturation(&mut fast, factor);
        for p in 0..n {
            let [r, g, b] = [0, 1, 2].map(|c| src.data[c * n + p]);
            let gray = 0.299 * r + 0.587 * g + 0.114 * b;
            for (c, v) in [r, g, b].into_iter().enumerate() {
                let want = (factor * v + (1.0 - factor) * gray).clamp(0.0, 1.0);
                assert!((fast.data[c * n + p] - want).abs() < 1e-6);
            }
        }
    }
}
