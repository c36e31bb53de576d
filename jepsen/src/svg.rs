//! Hand-written SVG plots for the report: a scatter of values over run time (log y axis) with
//! fault windows shaded and labelled. No plotting crate: the format is simple and this keeps
//! the dependency list short.

use std::fmt::Write;

/// A shaded interval on the x axis (seconds since run start).
#[derive(Debug, Clone)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
}

/// A series of points (x seconds, y milliseconds).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 1000.0;
const H: f64 = 420.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 30.0;
const B: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A scatter plot with a log y axis from 0.1 ms up to the largest value.
pub fn scatter(
    title: &str,
    y_label: &str,
    x_max: f64,
    bands: &[Band],
    series: &[Series],
) -> String {
    let y_min: f64 = 0.1;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(10.0f64, f64::max)
        * 1.5;
    let x_max = x_max.max(1.0);
    let px = |x: f64| L + (x / x_max).clamp(0.0, 1.0) * (W - L - R);
    let py = |y: f64| {
        let (lo, hi) = (y_min.log10(), y_max.log10());
        let v = (y.max(y_min).log10() - lo) / (hi - lo);
        H - B - v.clamp(0.0, 1.0) * (H - T - B)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="18" font-size="14" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for (i, b) in bands.iter().enumerate() {
        let (x0, x1) = (px(b.from), px(b.to));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{T}" width="{:.1}" height="{}" fill="#f4a259" fill-opacity="0.25"/>"##,
            (x1 - x0).max(1.0),
            H - T - B
        );
        let ly = T + 12.0 + (i % 4) as f64 * 12.0;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{ly}" fill="#9a4a00">{}</text>"##,
            x0 + 2.0,
            esc(&b.label)
        );
    }
    // Axes and ticks.
    let _ = write!(
        s,
        r#"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>"#,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut tick = y_min;
    while tick <= y_max {
        let y = py(tick);
        let _ = write!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 4.0,
            y + 4.0,
            if tick < 1.0 {
                format!("{tick}")
            } else {
                format!("{tick:.0}")
            }
        );
        tick *= 10.0;
    }
    let step = ((x_max / 10.0).ceil()).max(1.0);
    let mut x = 0.0;
    while x <= x_max {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            H - B + 15.0
        );
        x += step;
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        W / 2.0,
        H - 12.0
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        for (x, y) in &ser.points {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.8" fill="{}" fill-opacity="0.7"/>"#,
                px(*x),
                py(*y),
                ser.color
            );
        }
        let lx = W - R - 200.0;
        let ly = T + 12.0 + i as f64 * 14.0;
        let _ = write!(
            s,
            r#"<circle cx="{lx}" cy="{}" r="4" fill="{}"/><text x="{}" y="{ly}">{} ({})</text>"#,
            ly - 4.0,
            ser.color,
            lx + 8.0,
            esc(&ser.name),
            ser.points.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bands_points_and_escapes_text() {
        let svg = scatter(
            "lateness <ms>",
            "ms",
            60.0,
            &[Band {
                from: 10.0,
                to: 15.0,
                label: "kill-leader".into(),
            }],
            &[Series {
                name: "first delivery".into(),
                color: "#1f77b4".into(),
                points: vec![(1.0, 2.5), (12.0, 900.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("lateness &lt;ms&gt;"));
        assert!(svg.contains("kill-leader"));
        assert_eq!(svg.matches("<circle").count(), 3);
    }
}
