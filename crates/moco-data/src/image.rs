//! Images as `f32` buffers in `[0, 1]`, channels first (`C × H × W`).

/// An image: 1 (grayscale) or 3 (RGB) channels, row-major planes, values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Number of channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels · height · width` values, plane after plane.
    pub data: Vec<f32>,
}

impl Image {
    /// A blank image.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Image {
            channels,
            height,
            width,
            data: vec![0.0; channels * height * width],
        }
    }

    /// From 8-bit values in channels-first order.
    pub fn from_u8_chw(channels: usize, height: usize, width: usize, bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len(), channels * height * width);
        Image {
            channels,
            height,
            width,
            data: bytes.iter().map(|&b| b as f32 / 255.0).collect(),
        }
    }

    /// From 8-bit values in channels-last order (as decoders produce them).
    pub fn from_u8_hwc(channels: usize, height: usize, width: usize, bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len(), channels * height * width);
        let lut: [f32; 256] = std::array::from_fn(|b| b as f32 / 255.0);
        let mut img = Image::zeros(channels, height, width);
        let plane = height * width;
        if channels == 3 {
            // One pass writing three planes (the general loop's scattered stores cost more
            // than the decode of a 500×375 JPEG).
            let (r, gb) = img.data.split_at_mut(plane);
            let (g, b) = gb.split_at_mut(plane);
            for ((px, r), (g, b)) in bytes
                .chunks_exact(3)
                .zip(r.iter_mut())
                .zip(g.iter_mut().zip(b.iter_mut()))
            {
                *r = lut[px[0] as usize];
                *g = lut[px[1] as usize];
                *b = lut[px[2] as usize];
            }
            return img;
        }
        for (p, px) in bytes.chunks_exact(channels).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                img.data[c * plane + p] = lut[v as usize];
            }
        }
        img
    }

    /// Pixels per channel.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Value at channel `c`, row `y`, column `x`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}
