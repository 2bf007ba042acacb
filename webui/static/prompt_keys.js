// Ctrl+Up / Ctrl+Down in the prompt boxes: AUTOMATIC1111's keyboard weight editing. The selection, else the
// <lora:…:w> tag, the (…) group or the word at the cursor, gets its weight raised or lowered by 0.1.
(function () {
  "use strict";

  const STEP = 0.1;
  const BOXES = ["txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt", "img2img_neg_prompt"];
  const DELIMITERS = ".,\\/!?%^*;:{}=`~()[]<>| \t\r\n";
  const NUMBER = /^-?(\d+\.?\d*|\.\d+)$/;
  const WEIGHT = /^:(-?(?:\d+\.?\d*|\.\d+))([)>])/;

  // Whether text[i] is `ch` as prompt syntax, not escaped with a backslash.
  function isSyntax(text, i, ch) { return text[i] === ch && text[i - 1] !== "\\"; }

  // [open, close] positions of the innermost open…close pair around position pos, or null.
  function enclosing(text, pos, open, close) {
    let a = pos - 1, b = pos;
    for (let depth = 0; a >= 0; a--) {
      if (isSyntax(text, a, close)) depth++;
      else if (isSyntax(text, a, open) && depth-- === 0) break;
    }
    for (let depth = 0; b < text.length; b++) {
      if (isSyntax(text, b, open)) depth++;
      else if (isSyntax(text, b, close) && depth-- === 0) break;
    }
    return a >= 0 && b < text.length ? [a, b] : null;
  }

  // [start, end] of the words at the cursor: those of the weighted tag or group around it, else the group's whole
  // content, else the word under it.
  function wordsAt(text, pos) {
    for (const [open, close] of [["<", ">"], ["(", ")"]]) {
      const pair = enclosing(text, pos, open, close);
      if (!pair) continue;
      const inner = text.slice(pair[0] + 1, pair[1]);
      const colon = inner.lastIndexOf(":");
      if (colon >= 0 && NUMBER.test(inner.slice(colon + 1))) return [pair[0] + 1, pair[0] + 1 + colon];
      if (open === "(") return [pair[0] + 1, pair[1]];
    }
    let a = pos, b = pos;
    while (a > 0 && !DELIMITERS.includes(text[a - 1])) a--;
    while (b < text.length && !DELIMITERS.includes(text[b])) b++;
    return [a, b];
  }

  // text[from, to) replaced by the words text[a, b) with this weight: "(words:w)" ("<words:w>" for a tag), or the
  // bare words when an attention weight comes back to 1. The new text and the selection on the words.
  function reweigh(text, from, a, b, to, weight, tag) {
    weight = parseFloat(weight.toPrecision(12));
    const words = text.slice(a, b);
    const bare = !tag && weight === 1;
    const number = Number.isInteger(weight) ? weight.toFixed(1) : String(weight);
    const edited = bare ? words : (tag ? "<" : "(") + words + ":" + number + (tag ? ">" : ")");
    const start = bare ? from : from + 1;
    return { text: text.slice(0, from) + edited + text.slice(to), selStart: start, selEnd: start + words.length };
  }

  // The text with the weight of the selection (else of what is at the cursor) changed by delta, and the selection on
  // the edited words; unchanged where there are no words.
  function editWeight(text, selStart, selEnd, delta) {
    const tag = enclosing(text, selStart, "<", ">");
    let [a, b] = selStart === selEnd || (tag && selEnd <= tag[1]) ? wordsAt(text, selStart) : [selStart, selEnd];
    while (a < b && /\s/.test(text[a])) a++;
    while (b > a && /\s/.test(text[b - 1])) b--;
    if (a === b) return { text: text, selStart: selStart, selEnd: selEnd };
    const weight = WEIGHT.exec(text.slice(b));
    const opener = weight && (weight[2] === ")" ? "(" : "<");
    if (weight && isSyntax(text, a - 1, opener)) {
      return reweigh(text, a - 1, a, b, b + weight[0].length, parseFloat(weight[1]) + delta, opener === "<");
    }
    // Plain words (weight 1), or (((words))) and [[words]], the old emphasis of ×1.1 (÷1.1) per pair, rounded
    let pairs = 0, factor = 1.1;
    while (isSyntax(text, a - 1 - pairs, "(") && isSyntax(text, b + pairs, ")")) pairs++;
    if (!pairs) {
      factor = 1 / 1.1;
      while (isSyntax(text, a - 1 - pairs, "[") && isSyntax(text, b + pairs, "]")) pairs++;
    }
    const old = Math.round(factor ** pairs / STEP) * STEP;
    return reweigh(text, a - pairs, a, b, b + pairs, old + delta, false);
  }

  window.sdEditWeight = editWeight;

  document.addEventListener("keydown", function (e) {
    if (!(e.ctrlKey || e.metaKey) || (e.key !== "ArrowUp" && e.key !== "ArrowDown")) return;
    const box = e.target;
    if (box.tagName !== "TEXTAREA" || !BOXES.some(function (id) { return box.closest("#" + id); })) return;
    e.preventDefault();
    const edit = editWeight(box.value, box.selectionStart, box.selectionEnd, e.key === "ArrowUp" ? STEP : -STEP);
    if (edit.text === box.value) return;
    box.value = edit.text;
    box.setSelectionRange(edit.selStart, edit.selEnd);
    box.dispatchEvent(new Event("input", { bubbles: true }));
  });
})();
