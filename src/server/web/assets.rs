//! Script, style and plotly.js, compiled into the binary: the pages load nothing from outside.
//! plotly.min.js (v3.0.1, 4.6 MB) comes from the `plotly` crate's `plotly_embed_js` feature,
//! which ships it for offline HTML; it is cut out of that crate's script tags once, on first use.

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

pub const APP_JS: &str = include_str!("assets/app.js");
pub const STYLE_CSS: &str = include_str!("assets/style.css");

/// plotly.min.js as the `plotly` crate embeds it.
pub fn plotly_js() -> &'static str {
    static JS: OnceLock<String> = OnceLock::new();
    JS.get_or_init(|| {
        let tags = plotly::Plot::offline_js_sources();
        let open = "<script type=\"text/javascript\">";
        let start = tags.find(open).map_or(0, |i| i + open.len());
        let end = tags[start..]
            .find("</script>")
            .map_or(tags.len(), |i| start + i);
        tags[start..end].to_string()
    })
}

struct Asset {
    body: &'static str,
    mime: &'static str,
    etag: String,
}

fn asset(name: &str) -> Option<&'static Asset> {
    static ASSETS: OnceLock<Vec<(&'static str, Asset)>> = OnceLock::new();
    let all = ASSETS.get_or_init(|| {
        let make = |body: &'static str, mime: &'static str| Asset {
            body,
            mime,
            etag: format!("\"{:x}\"", md5::compute(body.as_bytes())),
        };
        vec![
            ("app.js", make(APP_JS, "text/javascript; charset=utf-8")),
            ("style.css", make(STYLE_CSS, "text/css; charset=utf-8")),
            (
                "plotly.min.js",
                make(plotly_js(), "text/javascript; charset=utf-8"),
            ),
        ]
    });
    all.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// A version tag for URLs (`/static/app.js?v=...`), so a new binary's assets are fetched anew.
pub fn version(name: &str) -> String {
    asset(name).map_or_else(String::new, |a| a.etag.trim_matches('"')[..8].to_string())
}

/// `GET /static/{file}`: no login needed (nothing in them is private).
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = asset(&file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let cache = [
        (header::ETAG, a.etag.clone()),
        (header::CACHE_CONTROL, "public, max-age=86400".to_string()),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == a.etag)
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [
            (header::CONTENT_TYPE, a.mime),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        a.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn plotly_is_the_library_alone() {
        let js = super::plotly_js();
        assert!(js.len() > 1_000_000, "plotly.min.js is {} bytes", js.len());
        assert!(js.contains("plotly.js v3"), "{}", &js[..200]);
        assert!(!js.contains("</script>"));
        // Just the library, cut before the MathJax script the crate appends.
        assert!(
            js.trim_end().ends_with("return Plotly;\n}));"),
            "{}",
            &js[js.len() - 200..]
        );
        assert!(js.len() < 5_000_000, "plotly.min.js is {} bytes", js.len());
    }
}
