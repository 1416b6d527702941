//! One line chart drawn with plotters: round tick values, a legend in its own column right of
//! the plot area (it never covers data), vertical markers for events such as gradient spikes
//! and kNN dips. Drawn at twice its size and averaged down, so every line and letter is
//! anti-aliased. Text uses the Ubuntu Light typeface embedded in the binary; no system font
//! is read.

use std::ops::Range;
use std::sync::OnceLock;

use image::{imageops, RgbImage};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::TrainError;

/// Width of one chart in pixels.
pub const W: u32 = 900;
/// Height of one chart in pixels.
pub const H: u32 = 420;
/// Drawn at this multiple of the size, then averaged down.
const SUPERSAMPLE: u32 = 2;
/// Width of the legend column.
const LEGEND: u32 = 190;
/// Legend labels are cut to this many characters.
const LABEL_CHARS: usize = 24;
/// Series with at most this many points also get a dot at each point.
const DOTTED: usize = 40;
const FONT: &str = "sans-serif";

/// Line colours, in order.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points (x, y); a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: [u8; 3],
}

/// A shaded band, e.g. ± one standard deviation around a mean over seeds.
pub struct Band {
    /// (x, lower y, upper y).
    pub points: Vec<(f64, f64, f64)>,
    /// Colour (drawn pale).
    pub color: [u8; 3],
}

/// A line chart.
pub struct Chart {
    /// Title above the chart.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Logarithmic y axis (points with y ≤ 0 are left out).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers (x, colour), e.g. spikes and dips.
    pub markers: Vec<(f64, [u8; 3])>,
    /// Legend entries for the markers (text, colour), listed under the series.
    pub marker_legend: Vec<(String, [u8; 3])>,
    /// Fixed y range (before the 5 % margin), to compare charts side by side; fitted to the
    /// data when absent.
    pub y_range: Option<(f64, f64)>,
    /// Shaded bands under the lines.
    pub bands: Vec<Band>,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

impl Chart {
    /// A chart of `series` against the iteration, linear axes, no markers.
    pub fn new(title: impl Into<String>, series: Vec<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: "iteration".into(),
            log_y: false,
            series,
            markers: Vec::new(),
            marker_legend: Vec::new(),
            y_range: None,
            bands: Vec::new(),
        }
    }

    /// Draws the chart to a PNG file.
    pub fn save(&self, path: &std::path::Path) -> Result<(), TrainError> {
        super::save_png(&self.render()?, path)
    }

    /// Draws the chart, `W` × `H` pixels.
    pub fn render(&self) -> Result<RgbImage, TrainError> {
        register_font()?;
        let (w, h) = (W * SUPERSAMPLE, H * SUPERSAMPLE);
        let mut pixels = vec![255u8; (w * h * 3) as usize];
        let drawn = {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            self.draw(&root).and_then(|()| root.present().map_err(text))
        };
        drawn
            .map_err(|e| TrainError::Io(format!("cannot draw the chart '{}': {e}", self.title)))?;
        let large = RgbImage::from_raw(w, h, pixels).expect("the buffer holds w × h RGB pixels");
        Ok(imageops::resize(
            &large,
            W,
            H,
            imageops::FilterType::Triangle,
        ))
    }

    fn draw(&self, root: &Area) -> Result<(), String> {
        // One line needs no legend: the title names it.
        let legend = self.series.len() > 1 || !self.marker_keys().is_empty();
        let plot_width = if legend { W - LEGEND } else { W };
        let (plot, legend_area) = root.split_horizontally((plot_width * SUPERSAMPLE) as i32);
        let (x, y) = self.bounds();
        if self.log_y {
            self.draw_plot(&plot, x, y.clone().log_scale(), y)?;
        } else {
            self.draw_plot(&plot, x, y.clone(), y)?;
        }
        if legend {
            self.draw_legend(&legend_area)?;
        }
        Ok(())
    }

    /// Whether a point can be drawn on this chart's axes.
    fn drawable(&self, (x, y): (f64, f64)) -> bool {
        x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// The x range and the y range with a 5 % margin (multiplicative on a log axis).
    fn bounds(&self) -> (Range<f64>, Range<f64>) {
        let bands = self.bands.iter().flat_map(|b| b.points.iter());
        let band_edges = bands.flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
        let points = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(band_edges);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in points.filter(|&p| self.drawable(p)) {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
        }
        if let Some((lo, hi)) = self.y_range {
            (y0, y1) = (lo, hi);
        }
        if self.log_y {
            y0 = y0.max(y1 * 1e-12).max(f64::MIN_POSITIVE);
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if self.log_y {
            let pad = (y1 / y0).max(4.0).powf(0.05);
            (x0..x1, y0 / pad..y1 * pad)
        } else {
            let half = if y1 - y0 < 1e-12 { 0.5 } else { 0.0 };
            let pad = (y1 - y0) * 0.05 + half;
            (x0..x1, y0 - pad..y1 + pad)
        }
    }

    fn draw_plot<Y>(
        &self,
        area: &Area,
        x: Range<f64>,
        y: Y,
        y_span: Range<f64>,
    ) -> Result<(), String>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let s = SUPERSAMPLE as i32;
        let x_span = x.clone();
        let scale = |r: &Range<f64>| r.start.abs().max(r.end.abs());
        // A log axis spans decades: each tick is written on its own.
        let (x_scale, y_scale) = (scale(&x), if self.log_y { 0.0 } else { scale(&y_span) });
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, (FONT, 18 * s))
            .margin(10 * s)
            .x_label_area_size(42 * s)
            .y_label_area_size(64 * s)
            .build_cartesian_2d(x, y)
            .map_err(text)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(226, 226, 226).stroke_width(s as u32))
            .axis_style(BLACK.stroke_width(s as u32))
            .set_all_tick_mark_size(4 * s)
            .label_style((FONT, 14 * s))
            .axis_desc_style((FONT, 15 * s))
            .x_desc(self.x_label.as_str())
            .x_labels(8)
            .y_labels(7)
            .x_label_formatter(&|v| tick_label(*v, x_scale))
            .y_label_formatter(&|v| tick_label(*v, y_scale))
            .draw()
            .map_err(text)?;
        for band in &self.bands {
            let edge = |&(x, lo, hi): &(f64, f64, f64)| [(x, lo), (x, hi)];
            let inside = band
                .points
                .iter()
                .filter(|p| self.drawable(edge(p)[0]) && self.drawable(edge(p)[1]));
            let (lower, upper): (Vec<_>, Vec<_>) = inside.map(|p| (edge(p)[0], edge(p)[1])).unzip();
            let outline: Vec<(f64, f64)> =
                upper.into_iter().chain(lower.into_iter().rev()).collect();
            let fill = rgb(band.color).mix(0.2).filled();
            chart
                .draw_series(std::iter::once(Polygon::new(outline, fill)))
                .map_err(text)?;
        }
        let markers = self.markers.iter().filter(|m| x_span.contains(&m.0));
        chart
            .draw_series(markers.map(|&(mx, c)| {
                let ends = vec![(mx, y_span.start), (mx, y_span.end)];
                PathElement::new(ends, rgb(c).stroke_width(s as u32))
            }))
            .map_err(text)?;
        for series in &self.series {
            let style = rgb(series.color).stroke_width(2 * s as u32);
            for segment in series.points.split(|&p| !self.drawable(p)) {
                chart
                    .draw_series(LineSeries::new(segment.iter().copied(), style))
                    .map_err(text)?;
            }
            if series.points.len() <= DOTTED {
                let dots = series.points.iter().filter(|&&p| self.drawable(p));
                chart
                    .draw_series(dots.map(|&p| Circle::new(p, 3 * s, style.filled())))
                    .map_err(text)?;
            }
        }
        Ok(())
    }

    /// The marker legend entries whose colour marks something on this chart.
    fn marker_keys(&self) -> Vec<&(String, [u8; 3])> {
        let used = |c: &[u8; 3]| self.markers.iter().any(|m| m.1 == *c);
        self.marker_legend.iter().filter(|(_, c)| used(c)).collect()
    }

    /// The legend column: a line per series, then a bar per kind of marker drawn.
    fn draw_legend(&self, area: &Area) -> Result<(), String> {
        let s = SUPERSAMPLE as i32;
        let marker_keys = self.marker_keys();
        let entries = self.series.len() + marker_keys.len();
        let top = 46 * s;
        let row = (19 * s).min((H as i32 * s - top - 10 * s) / entries.max(1) as i32);
        let label =
            TextStyle::from((FONT, 14 * s).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let lines = self.series.iter().map(|e| (&e.label, e.color, false));
        let bars = marker_keys.into_iter().map(|(l, c)| (l, *c, true));
        for (i, (name, color, bar)) in lines.chain(bars).enumerate() {
            let y = top + i as i32 * row;
            let key = if bar {
                vec![(16 * s, y - 7 * s), (16 * s, y + 7 * s)]
            } else {
                vec![(4 * s, y), (28 * s, y)]
            };
            let width = if bar { 3 * s } else { 2 * s };
            area.draw(&PathElement::new(
                key,
                rgb(color).stroke_width(width as u32),
            ))
            .map_err(text)?;
            let name: String = name.chars().take(LABEL_CHARS).collect();
            area.draw(&Text::new(name, (36 * s, y), label.clone()))
                .map_err(text)?;
        }
        Ok(())
    }
}

/// Charts next to each other in one image.
pub fn side_by_side(charts: &[RgbImage]) -> RgbImage {
    let mut out = RgbImage::from_pixel(W * charts.len().max(1) as u32, H, image::Rgb([255; 3]));
    for (i, c) in charts.iter().enumerate() {
        imageops::replace(&mut out, c, i as i64 * W as i64, 0);
    }
    out
}

/// A tick value as short as it can be written: `0.3`, `1500`, `2e-4`. `scale` is the largest
/// magnitude on the axis: an axis whose values are all below 0.01 (or from a million up) is
/// written in scientific notation throughout, so its labels do not mix `5e-4` and `0.001`;
/// 0 writes each value on its own.
pub fn tick_label(v: f64, scale: f64) -> String {
    let a = if scale > 0.0 { scale } else { v.abs() };
    if v.abs() < 1e-300 {
        return "0".into();
    }
    if (1e-2..1e6).contains(&a) || (scale == 0.0 && (1e-3..1e6).contains(&a)) {
        let text = format!("{v:.4}");
        return text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    let text = format!("{v:.2e}");
    let (mantissa, exponent) = text.split_once('e').expect("scientific notation has an e");
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    format!("{mantissa}e{exponent}")
}

fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Makes the embedded typeface the charts' sans-serif font (once).
fn register_font() -> Result<(), TrainError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let font = epaint_default_fonts::UBUNTU_LIGHT;
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, font).is_ok());
    ok.then_some(())
        .ok_or_else(|| TrainError::Io("the embedded chart font cannot be read".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_as_short_as_their_value() {
        let cases = [
            (0.30000000000000004, "0.3"),
            (1500.0, "1500"),
            (-0.5, "-0.5"),
            (0.0, "0"),
            (0.0015, "0.0015"),
            (2e-4, "2e-4"),
            (2.5e-5, "2.5e-5"),
            (3e7, "3e7"),
        ];
        for (value, label) in cases {
            assert_eq!(tick_label(value, 0.0), label, "{value}");
        }
        // On an axis up to 0.0015, every tick is scientific.
        let lr_axis: Vec<String> = [0.0, 5e-4, 1e-3, 1.5e-3]
            .iter()
            .map(|&v| tick_label(v, 1.5e-3))
            .collect();
        assert_eq!(lr_axis, ["0", "5e-4", "1e-3", "1.5e-3"]);
        assert_eq!(tick_label(0.25, 0.3), "0.25");
    }

    #[test]
    fn a_log_chart_leaves_out_what_it_cannot_draw() {
        let points = vec![
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 0.0),
            (3.0, -1.0),
            (4.0, 1e3),
        ];
        let mut chart = Chart::new(
            "norms",
            vec![Series {
                label: "a".into(),
                points,
                color: PALETTE[1],
            }],
        );
        chart.log_y = true;
        chart.markers = vec![(2.0, PALETTE[2]), (99.0, PALETTE[3])];
        let (x, y) = chart.bounds();
        assert_eq!(x, 0.0..4.0);
        assert!(y.start > 0.0 && y.start < 1.0 && y.end > 1e3, "{y:?}");
        let image = chart.render().unwrap();
        assert_eq!(image.dimensions(), (W, H));
        let empty = Chart::new("nothing yet", Vec::new()).render().unwrap();
        assert_eq!(empty.dimensions(), (W, H));
    }

    #[test]
    fn the_legend_has_its_own_column() {
        let series = |label: &str, color| Series {
            label: label.into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            color,
        };
        let chart = Chart::new(
            "two",
            vec![series("up", PALETTE[0]), series("also up", PALETTE[2])],
        );
        let image = chart.render().unwrap();
        let legend_column = (W - LEGEND + 2..W).flat_map(|x| (0..H).map(move |y| (x, y)));
        let keys: Vec<[u8; 3]> = legend_column
            .map(|(x, y)| image.get_pixel(x, y).0)
            .collect();
        for color in [PALETTE[0], PALETTE[2]] {
            let near = |p: &[u8; 3]| (0..3).all(|k| p[k].abs_diff(color[k]) <= 12);
            assert!(keys.iter().any(near), "no legend key of colour {color:?}");
        }
    }
}
