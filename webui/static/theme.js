// --theme light|dark (window.sdTheme): the page opens in that theme unless the URL names one (?__theme=…, which
// Gradio applies itself). Gradio runs this before it shows the app, so the other theme never appears.
(function () {
  "use strict";

  const theme = window.sdTheme;
  const url = new URL(window.location.href);
  if (!theme || url.searchParams.has("__theme")) return;
  url.searchParams.set("__theme", theme);
  history.replaceState(history.state, "", url);  // as if the URL had named it: Gradio's settings panel shows it

  function apply() { document.body.classList.toggle("dark", theme === "dark"); }

  apply();
  // Without a theme in the URL Gradio follows the system's colour scheme when it changes: keep this one.
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", apply);
})();
