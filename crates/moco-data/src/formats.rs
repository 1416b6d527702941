//! Readers for the formats users have: IDX (MNIST, Fashion-MNIST, KMNIST; plain or gzip),
//! CIFAR-10/100 binary, and image folders in ImageNet's layout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{ArrayDataset, DataError, ImageDataset, Sample};
use crate::image::Image;

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training images.
    Train,
    /// Held-out images (`test` / `t10k` / `val`).
    Test,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw =
        std::fs::read(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::file(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX buffer of unsigned bytes: returns the dimensions and the payload.
pub fn parse_idx(bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes: too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "wrong magic number {:02x}{:02x}{:02x}{:02x}: not an IDX file",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x} is not unsigned bytes (0x08)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(format!("IDX header of {ndims} dimensions is truncated"));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("IDX dimensions {dims:?} overflow"))?;
    let payload = &bytes[header..];
    if payload.len() != count {
        return Err(format!(
            "IDX dimensions {dims:?} need {count} bytes of data, the file has {}{}",
            payload.len(),
            if payload.len() < count {
                " (truncated)"
            } else {
                ""
            }
        ));
    }
    Ok((dims, payload))
}

/// Reads an IDX image file and its label file into a dataset.
pub fn read_idx(
    images: &Path,
    labels: &Path,
    name: &str,
    classes: Option<Vec<String>>,
) -> Result<ArrayDataset, DataError> {
    let image_bytes = read_maybe_gz(images)?;
    let (dims, pixels) = parse_idx(&image_bytes).map_err(|m| DataError::file(images, m))?;
    let [n, h, w] = dims[..] else {
        return Err(DataError::file(
            images,
            format!("image file has dimensions {dims:?}, expected [count, rows, cols]"),
        ));
    };
    let label_bytes = read_maybe_gz(labels)?;
    let (ldims, lvalues) = parse_idx(&label_bytes).map_err(|m| DataError::file(labels, m))?;
    if ldims.len() != 1 {
        return Err(DataError::file(
            labels,
            format!("label file has dimensions {ldims:?}, expected [count]"),
        ));
    }
    if ldims[0] != n {
        return Err(DataError::file(
            labels,
            format!("{} labels for {n} images in {}", ldims[0], images.display()),
        ));
    }
    let labels_u16: Vec<u16> = lvalues.iter().map(|&l| l as u16).collect();
    let classes = classes.unwrap_or_else(|| {
        let k = lvalues.iter().copied().max().map_or(0, |m| m as usize + 1);
        (0..k).map(|i| i.to_string()).collect()
    });
    ArrayDataset::new(name, (1, h, w), pixels.to_vec(), labels_u16, classes)
        .map_err(|e| DataError::file(labels, e.to_string()))
}

/// Fashion-MNIST's class names.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Finds `{prefix}-{kind}-ubyte[.gz]` in `dir`.
fn find_idx(dir: &Path, prefix: &str, kind: &str) -> Option<PathBuf> {
    [
        format!("{prefix}-{kind}-ubyte"),
        format!("{prefix}-{kind}-ubyte.gz"),
        format!("{prefix}-{kind}.idx3-ubyte"),
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// Reads the MNIST-layout files of `split` from `dir` (`train-*` or `t10k-*`).
pub fn read_idx_dir(
    dir: &Path,
    split: Split,
    classes: Option<Vec<String>>,
) -> Result<ArrayDataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = find_idx(dir, prefix, "images-idx3").ok_or_else(|| {
        DataError::file(
            dir,
            format!("no {prefix}-images-idx3-ubyte[.gz]: the {split:?} split is missing"),
        )
    })?;
    let labels = find_idx(dir, prefix, "labels-idx1").ok_or_else(|| {
        DataError::file(
            dir,
            format!(
                "no {prefix}-labels-idx1-ubyte[.gz] for {}",
                images.display()
            ),
        )
    })?;
    let name = format!("{} ({prefix})", dir.display());
    read_idx(&images, &labels, &name, classes)
}

/// CIFAR-10 or CIFAR-100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes, `data_batch_{1..5}.bin` / `test_batch.bin`.
    Ten,
    /// 100 classes (fine labels), `train.bin` / `test.bin`.
    Hundred,
}

/// Reads CIFAR binary batches of `split` from `dir`.
pub fn read_cifar(dir: &Path, kind: Cifar, split: Split) -> Result<ArrayDataset, DataError> {
    let (files, record, label_at, num_classes, names_file): (
        Vec<PathBuf>,
        usize,
        usize,
        usize,
        &str,
    ) = match (kind, split) {
        (Cifar::Ten, Split::Train) => (
            (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect(),
            3073,
            0,
            10,
            "batches.meta.txt",
        ),
        (Cifar::Ten, Split::Test) => (
            vec![dir.join("test_batch.bin")],
            3073,
            0,
            10,
            "batches.meta.txt",
        ),
        (Cifar::Hundred, Split::Train) => (
            vec![dir.join("train.bin")],
            3074,
            1,
            100,
            "fine_label_names.txt",
        ),
        (Cifar::Hundred, Split::Test) => (
            vec![dir.join("test.bin")],
            3074,
            1,
            100,
            "fine_label_names.txt",
        ),
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        if !file.is_file() {
            return Err(DataError::file(
                file,
                format!("missing: the {split:?} split of CIFAR needs it"),
            ));
        }
        let bytes =
            std::fs::read(file).map_err(|e| DataError::file(file, format!("cannot read: {e}")))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::file(
                file,
                format!("{} bytes is not a whole number of {record}-byte CIFAR records (truncated or not CIFAR)", bytes.len()),
            ));
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[label_at] as usize;
            if label >= num_classes {
                return Err(DataError::file(
                    file,
                    format!("record {i} has label {label}, but CIFAR has {num_classes} classes"),
                ));
            }
            labels.push(label as u16);
            pixels.extend_from_slice(&rec[record - 3072..]);
        }
    }
    let classes = std::fs::read_to_string(dir.join(names_file))
        .ok()
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|c| c.len() == num_classes)
        .unwrap_or_else(|| (0..num_classes).map(|i| i.to_string()).collect());
    let name = format!(
        "{} (CIFAR-{}, {split:?})",
        dir.display(),
        if kind == Cifar::Ten { 10 } else { 100 }
    );
    ArrayDataset::new(name, (3, 32, 32), pixels, labels, classes)
        .map_err(|e| DataError::file(dir, e.to_string()))
}

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "jfif"];

/// An image folder: one sub-folder per class, images decoded when read.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Arc<Vec<(PathBuf, u16)>>,
    classes: Vec<String>,
    channels: usize,
}

impl ImageFolder {
    /// Lists `root/<class>/<image>`; classes sorted by name. An empty class folder is an
    /// error, since it would silently shift every later label.
    pub fn open(root: &Path, channels: usize) -> Result<Self, DataError> {
        let entries = std::fs::read_dir(root)
            .map_err(|e| DataError::file(root, format!("cannot list: {e}")))?;
        let mut class_dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(DataError::file(
                root,
                "no class sub-folders: expected ROOT/<class>/<image>",
            ));
        }
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let listing = std::fs::read_dir(dir)
                .map_err(|e| DataError::file(dir, format!("cannot list: {e}")))?;
            let mut images: Vec<PathBuf> = listing
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                        })
                })
                .collect();
            if images.is_empty() {
                return Err(DataError::file(
                    dir,
                    "class folder holds no images (jpg, jpeg, png, bmp, webp)",
                ));
            }
            images.sort();
            files.extend(images.into_iter().map(|p| (p, label as u16)));
            classes.push(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        if classes.len() > u16::MAX as usize {
            return Err(DataError::file(root, "more than 65535 classes"));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            files: Arc::new(files),
            classes,
            channels,
        })
    }

    /// Path of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }
}

/// Decodes an image file to 1 or 3 channels.
pub fn decode_image(path: &Path, channels: usize) -> Result<Image, DataError> {
    let bytes =
        std::fs::read(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if bytes.is_empty() {
        return Err(DataError::file(path, "empty file"));
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::file(path, format!("cannot decode: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(if channels == 1 {
        Image::from_u8_hwc(1, h, w, img.to_luma8().as_raw())
    } else {
        Image::from_u8_hwc(3, h, w, img.to_rgb8().as_raw())
    })
}

impl ImageDataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.files.get(index).ok_or_else(|| {
            DataError::Invalid(format!("no sample {index} of {}", self.files.len()))
        })?;
        Ok(Sample {
            image: decode_image(path, self.channels)?,
            label: *label as usize,
        })
    }
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn source(&self, index: usize) -> String {
        self.path(index)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
    fn describe(&self) -> String {
        format!(
            "{} (image folder): {} images, {} classes",
            self.root.display(),
            self.files.len(),
            self.classes.len()
        )
    }
}

/// Dataset formats `--dataset` can force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// Fashion-MNIST (IDX).
    FashionMnist,
    /// MNIST or KMNIST (IDX).
    Mnist,
    /// CIFAR-10 binary.
    Cifar10,
    /// CIFAR-100 binary.
    Cifar100,
    /// Image folder.
    Folder,
}

impl DatasetKind {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Folder,
    ];
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "fashion-mnist" | "fashion_mnist" | "fmnist" => DatasetKind::FashionMnist,
            "mnist" | "kmnist" | "idx" => DatasetKind::Mnist,
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" => DatasetKind::Cifar100,
            "folder" | "imagefolder" => DatasetKind::Folder,
            _ => {
                return Err(format!(
                    "unknown dataset '{s}': use fashion-mnist, mnist, cifar10, cifar100 or folder"
                ))
            }
        })
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Folder => "folder",
        })
    }
}

/// Written as its name (`fashion-mnist`, …), read from any name `--dataset` accepts.
impl serde::Serialize for DatasetKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DatasetKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Recognises the format of the data at `path`.
pub fn detect(path: &Path) -> Result<(DatasetKind, PathBuf), DataError> {
    if !path.exists() {
        return Err(DataError::file(path, "does not exist"));
    }
    if !path.is_dir() {
        return Err(DataError::file(
            path,
            "expected a folder (IDX files, CIFAR batches or class sub-folders)",
        ));
    }
    for dir in [
        path.to_path_buf(),
        path.join("cifar-10-batches-bin"),
        path.join("cifar-100-binary"),
    ] {
        if dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file() {
            return Ok((DatasetKind::Cifar10, dir));
        }
        if dir.join("train.bin").is_file() || dir.join("test.bin").is_file() {
            return Ok((DatasetKind::Cifar100, dir));
        }
    }
    if find_idx(path, "train", "images-idx3").is_some()
        || find_idx(path, "t10k", "images-idx3").is_some()
    {
        let fashion = path
            .to_string_lossy()
            .to_ascii_lowercase()
            .contains("fashion");
        return Ok((
            if fashion {
                DatasetKind::FashionMnist
            } else {
                DatasetKind::Mnist
            },
            path.to_path_buf(),
        ));
    }
    Ok((DatasetKind::Folder, path.to_path_buf()))
}

/// Opens `split` of the data at `path`, in the given or the detected format.
pub fn open_dataset(
    path: &Path,
    kind: Option<DatasetKind>,
    split: Split,
) -> Result<Arc<dyn ImageDataset>, DataError> {
    let (kind, dir) = match kind {
        Some(k) => (k, path.to_path_buf()),
        None => detect(path)?,
    };
    Ok(match kind {
        DatasetKind::FashionMnist => Arc::new(read_idx_dir(
            &dir,
            split,
            Some(
                FASHION_MNIST_CLASSES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        )?),
        DatasetKind::Mnist => Arc::new(read_idx_dir(&dir, split, None)?),
        DatasetKind::Cifar10 => Arc::new(read_cifar(&dir, Cifar::Ten, split)?),
        DatasetKind::Cifar100 => Arc::new(read_cifar(&dir, Cifar::Hundred, split)?),
        DatasetKind::Folder => {
            // ImageNet layout: ROOT/train/<class>, ROOT/val/<class>; or ROOT/<class> directly.
            let sub = match split {
                Split::Train => dir.join("train"),
                Split::Test => dir.join("val"),
            };
            let root = if sub.is_dir() { sub } else { dir };
            Arc::new(ImageFolder::open(&root, 3)?)
        }
    })
}
