// Page behaviour Gradio has no option for: Ctrl+Enter, extra-network card clicks, tooltips.
(function () {
  "use strict";

  function visible(el) { return el && el.offsetParent !== null; }

  function setTextbox(elemId, value) {
    const box = document.querySelector("#" + elemId + " textarea, #" + elemId + " input");
    if (!box) return;
    box.value = value;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  document.addEventListener("keydown", function (e) {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    const button = ["txt2img_generate", "img2img_generate"]
      .map(function (id) { return document.getElementById(id); })
      .find(visible);
    if (button) { e.preventDefault(); button.click(); }
  });

  function pickCard(card) {
    const nonce = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
    setTextbox(card.dataset.target + "_en_pick", card.dataset.kind + "\t" + card.dataset.name + "\t" + nonce);
  }

  document.addEventListener("click", function (e) {
    const card = e.target.closest && e.target.closest(".sd-card");
    if (card) pickCard(card);
  });
  document.addEventListener("keydown", function (e) {
    if ((e.key === "Enter" || e.key === " ") && e.target.classList && e.target.classList.contains("sd-card")) {
      e.preventDefault();
      pickCard(e.target);
    }
  });

  function applyTooltips() {
    const tips = window.sdTooltips || {};
    Object.keys(tips).forEach(function (id) {
      const el = document.getElementById(id);
      if (!el || el.dataset.sdTip === "1") return;
      el.title = tips[id];
      el.dataset.sdTip = "1";
      el.querySelectorAll("input, textarea, button, label").forEach(function (child) {
        if (!child.title) child.title = tips[id];
      });
    });
  }

  let pending = false;
  new MutationObserver(function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; applyTooltips(); });
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
