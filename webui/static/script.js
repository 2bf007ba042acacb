// Page behaviour Gradio has no option for: Ctrl+Enter, extra-network card clicks (and their edit buttons), tooltips,
// and the last prompts of each tab kept across page reloads (in this browser's localStorage).
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

  function pickCard(card, box) {
    const nonce = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
    setTextbox(card.dataset.target + box, card.dataset.kind + "\t" + card.dataset.name + "\t" + nonce);
  }

  document.addEventListener("click", function (e) {
    const card = e.target.closest && e.target.closest(".sd-card");
    if (card) pickCard(card, e.target.closest(".sd-card-edit") ? "_en_edit" : "_en_pick");
  });
  document.addEventListener("keydown", function (e) {
    if ((e.key === "Enter" || e.key === " ") && e.target.classList && e.target.classList.contains("sd-card")) {
      e.preventDefault();
      pickCard(e.target, "_en_pick");
    }
  });

  // Sizes are rendered as multiples of 8 (rounded down): a typed width or height shows what will be rendered.
  const SIZE_FIELDS = ["txt2img_width", "txt2img_height", "img2img_width", "img2img_height"];
  document.addEventListener("change", function (e) {
    const field = e.target.closest && e.target.closest("#" + SIZE_FIELDS.join(", #"));
    if (!field || e.target.type !== "number") return;
    const value = Number(e.target.value);
    if (!Number.isFinite(value) || value % 8 === 0) return;
    e.target.value = String(Math.max(Number(e.target.min) || 8, value - value % 8));
    e.target.dispatchEvent(new Event("input", { bubbles: true }));
  }, true);

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

  const REMEMBERED = ["txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt", "img2img_neg_prompt"];

  function promptBox(id) { return document.querySelector("#" + id + " textarea"); }

  function remember(id) {
    const box = promptBox(id);
    if (!box || box.dataset.sdRestored !== "1") return;  // not before its remembered text was put back
    try { localStorage.setItem("sd-webui/" + id, box.value); } catch (e) { /* storage off: nothing kept */ }
  }

  function restorePrompts() {
    REMEMBERED.forEach(function (id) {
      const box = promptBox(id);
      if (!box || box.dataset.sdRestored === "1") return;
      box.dataset.sdRestored = "1";
      let saved = null;
      try { saved = localStorage.getItem("sd-webui/" + id); } catch (e) { return; }
      if (saved !== null && saved !== box.value) {
        box.value = saved;
        box.dispatchEvent(new Event("input", { bubbles: true }));
      }
    });
  }

  document.addEventListener("input", function (e) {
    REMEMBERED.forEach(function (id) { if (e.target === promptBox(id)) remember(id); });
  });
  // Text the server put into a prompt (styles, cards, PNG Info) is kept when the page goes away.
  window.addEventListener("pagehide", function () { REMEMBERED.forEach(remember); });

  let pending = false;
  new MutationObserver(function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; applyTooltips(); restorePrompts(); });
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
