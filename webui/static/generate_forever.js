// Generate forever (AUTOMATIC1111): right-click a Generate button for a menu that turns it on or off. While on,
// Generate is clicked every half second while the tab shows no progress bar, as A1111 does; Gradio ignores the
// clicks that come while the tab's last Generate is still pending (trigger_mode "once"), so jobs run one at a time.
// Interrupt ends only the current job, as in A1111.
(function () {
  "use strict";

  const REPEAT_MS = 500;
  const timers = {};  // kind -> the repeating timer while forever mode is on

  function tick(kind) {
    const progress = document.getElementById(kind + "_progress");
    if (!(progress && progress.querySelector(".sd-progress"))) document.getElementById(kind + "_generate").click();
  }

  function start(kind) {
    tick(kind);
    timers[kind] = setInterval(tick, REPEAT_MS, kind);
  }

  function cancel(kind) {
    clearInterval(timers[kind]);
    delete timers[kind];
  }

  let menu = null;

  function closeMenu() {
    if (menu) menu.remove();
    menu = null;
  }

  function openMenu(kind, x, y) {
    closeMenu();
    menu = document.createElement("div");
    menu.className = "sd-context-menu";
    menu.setAttribute("role", "menu");
    const on = kind in timers;
    [["Generate forever", !on, start], ["Cancel generate forever", on, cancel]].forEach(function (entry) {
      const item = document.createElement("button");
      item.type = "button";
      item.textContent = entry[0];
      item.disabled = !entry[1];
      item.setAttribute("role", "menuitem");
      item.addEventListener("click", function () { closeMenu(); entry[2](kind); });
      menu.appendChild(item);
    });
    document.body.appendChild(menu);
    const size = menu.getBoundingClientRect();
    menu.style.left = Math.max(0, Math.min(x, window.innerWidth - size.width)) + "px";
    menu.style.top = Math.max(0, Math.min(y, window.innerHeight - size.height)) + "px";
    menu.querySelector("button:enabled").focus();
  }

  document.addEventListener("contextmenu", function (e) {
    const button = e.target.closest && e.target.closest("#txt2img_generate, #img2img_generate");
    if (!button) return;
    e.preventDefault();
    openMenu(button.id.replace("_generate", ""), e.clientX, e.clientY);
  });
  document.addEventListener("pointerdown", function (e) { if (menu && !menu.contains(e.target)) closeMenu(); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeMenu(); });
  window.addEventListener("blur", closeMenu);
})();
