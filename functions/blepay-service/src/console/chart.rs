//! Charts drawn on the server as inline SVG: no script, no chart library, readable on a phone
//! (the SVG scales to its container's width).

use maud::{Markup, html};

const WIDTH: i64 = 720;
const HEIGHT: i64 = 220;
const LEFT: i64 = 8;
const BOTTOM: i64 = 28;
const TOP: i64 = 16;

/// Bars of `values` (non-negative; negative ones are drawn as 0) labelled `labels`, each bar's
/// title the shown text of its value (`shown`). `id` is the SVG element's id.
pub fn bars(id: &str, title: &str, labels: &[String], values: &[i64], shown: &[String]) -> Markup {
    let n = i64::try_from(values.len()).unwrap_or(i64::MAX).max(1);
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = (WIDTH - LEFT * 2) / n;
    let bar_w = (slot * 3 / 4).max(1);
    // Label every k-th bar so the labels never overlap (a label is about 40 px wide).
    let every = usize::try_from((40 / slot.max(1)).max(1)).unwrap_or(1);
    html! {
        svg id=(id) class="chart" viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(title) {
            title { (title) }
            line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - LEFT) y2=(HEIGHT - BOTTOM) class="axis" {}
            @for (i, v) in values.iter().enumerate() {
                @let x = LEFT + slot * i64::try_from(i).unwrap_or(0) + (slot - bar_w) / 2;
                @let h = (*v).max(0).saturating_mul(plot_h) / max;
                rect class="bar" x=(x) y=(HEIGHT - BOTTOM - h) width=(bar_w) height=(h.max(1)) {
                    title { (labels.get(i).map_or("", String::as_str)) ": " (shown.get(i).map_or("", String::as_str)) }
                }
                @if i % every == 0 {
                    text class="label" x=(x + bar_w / 2) y=(HEIGHT - 10) text-anchor="middle" {
                        (labels.get(i).map_or("", String::as_str))
                    }
                }
            }
            text class="label" x=(LEFT) y=(TOP - 4) { "max " (shown.iter().zip(values).max_by_key(|(_, v)| **v).map_or("", |(s, _)| s.as_str())) }
        }
    }
}

/// A line through `points` (`(unix seconds, value)`, oldest first) between `from` and `to` on
/// the x axis and `lo..=hi` on the y axis, each point a dot titled with its value.
pub fn line(
    id: &str,
    title: &str,
    points: &[(u64, i64, String)],
    (from, to): (u64, u64),
    (lo, hi): (i64, i64),
) -> Markup {
    let span_t = i64::try_from(to.saturating_sub(from))
        .unwrap_or(i64::MAX)
        .max(1);
    let span_v = (hi - lo).max(1);
    let plot_w = WIDTH - LEFT * 2;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let xy = |t: u64, v: i64| {
        let dt = i64::try_from(t.saturating_sub(from))
            .unwrap_or(span_t)
            .min(span_t);
        let x = LEFT + dt.saturating_mul(plot_w) / span_t;
        let y = HEIGHT - BOTTOM - (v.clamp(lo, hi) - lo).saturating_mul(plot_h) / span_v;
        (x, y)
    };
    let path: String = points
        .iter()
        .map(|(t, v, _)| {
            let (x, y) = xy(*t, *v);
            format!("{x},{y}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg id=(id) class="chart" viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(title) {
            title { (title) }
            line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - LEFT) y2=(HEIGHT - BOTTOM) class="axis" {}
            @if points.is_empty() {
                text class="label" x=(WIDTH / 2) y=(HEIGHT / 2) text-anchor="middle" { "no heartbeat in this period" }
            } @else {
                polyline class="series" points=(path) {}
                @for (t, v, shown) in points {
                    @let (x, y) = xy(*t, *v);
                    circle class="dot" cx=(x) cy=(y) r="3" { title { (super::fmt::utc_text(*t)) ": " (shown) } }
                }
            }
            text class="label" x=(LEFT) y=(HEIGHT - 10) { (super::fmt::utc_text(from)) }
            text class="label" x=(WIDTH - LEFT) y=(HEIGHT - 10) text-anchor="end" { (super::fmt::utc_text(to)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value() {
        let labels = vec!["a".to_owned(), "b".to_owned()];
        let svg = bars(
            "c",
            "t",
            &labels,
            &[50, 100],
            &["0.50".into(), "1.00".into()],
        )
        .into_string();
        assert!(svg.contains(r#"id="c""#));
        // Plot height 176: the larger bar is full height, the smaller half of it.
        assert!(svg.contains(r#"height="176""#), "{svg}");
        assert!(svg.contains(r#"height="88""#), "{svg}");
        assert!(svg.contains("max 1.00"));
    }

    #[test]
    fn empty_and_extreme_inputs_draw_without_panicking() {
        let _ = bars("c", "t", &[], &[], &[]);
        let _ = bars("c", "t", &["x".into()], &[i64::MAX], &["big".into()]);
        let _ = bars("c", "t", &["x".into()], &[-5], &[]);
        let empty = line("l", "t", &[], (0, 0), (0, 0)).into_string();
        assert!(empty.contains("no heartbeat"));
        let pts = vec![
            (10, 31, "31".to_owned()),
            (u64::MAX, i64::MIN, "x".to_owned()),
        ];
        let svg = line("l", "t", &pts, (0, 100), (0, 31)).into_string();
        assert!(svg.contains("polyline"));
    }

    #[test]
    fn a_line_spans_its_period() {
        let pts = vec![(0, 0, "0".to_owned()), (100, 31, "31".to_owned())];
        let svg = line("l", "t", &pts, (0, 100), (0, 31)).into_string();
        // First point at the bottom left, last at the top right.
        assert!(svg.contains(r#"points="8,192 712,16""#), "{svg}");
    }

    #[test]
    fn text_is_escaped() {
        let svg = bars("c", "<t>", &["<b>".into()], &[1], &["&".into()]).into_string();
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("&lt;b&gt;"));
    }
}
