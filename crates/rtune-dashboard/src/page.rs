//! The page: one HTML document with its style, the chart library and the application script
//! inlined, so that the server and the report hand out the same thing and nothing is fetched
//! from elsewhere.

const TEMPLATE: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// How the page gets its data.
pub enum PageData<'a> {
    /// From the server: the experiments list and server-sent events (token for the requests).
    Live { token: Option<&'a str> },
    /// Inlined: the report's experiments as JSON.
    Static { json: &'a str },
}

/// The whole page.
pub fn render(title: &str, data: PageData<'_>) -> String {
    let config = match data {
        PageData::Live { token } => serde_json::json!({ "live": true, "token": token }).to_string(),
        PageData::Static { .. } => serde_json::json!({ "live": false }).to_string(),
    };
    let data_json = match data {
        PageData::Static { json } => json,
        PageData::Live { .. } => "null",
    };
    TEMPLATE
        .replace("{{TITLE}}", &html_escape(title))
        .replace("{{UPLOT_CSS}}", UPLOT_CSS)
        .replace("{{APP_CSS}}", APP_CSS)
        .replace("{{CONFIG}}", &script_safe(&config))
        .replace("{{UPLOT_JS}}", UPLOT_JS)
        .replace("{{APP_JS}}", APP_JS)
        // Last: the data may contain anything, including the placeholders' text.
        .replace("{{DATA}}", &script_safe(data_json))
}

/// JSON made safe inside a `<script>` element: `</script>` and `<!--` cannot end it.
pub fn script_safe(json: &str) -> String {
    json.replace("</", "<\\/").replace("<!--", "<\\!--")
}

pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_end_the_script() {
        let page = render(
            "a<b",
            PageData::Static {
                json: r#"{"x":"</script><script>alert(1)</script>"}"#,
            },
        );
        assert!(!page.contains("</script><script>alert(1)"));
        assert!(page.contains("<title>rtune: a&lt;b</title>"));
        for p in [
            "{{TITLE}}",
            "{{CONFIG}}",
            "{{DATA}}",
            "{{APP_JS}}",
            "{{UPLOT_JS}}",
        ] {
            assert!(!page.contains(p), "{p} is filled");
        }
    }
}
