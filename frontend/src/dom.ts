/** Small DOM helpers (no framework): element creation, formatting, colours, downloads. */

type Attrs = Record<string, string | number | boolean | null | undefined | ((ev: Event) => void)>;
type Child = Node | string | number | null | undefined | false;

/** `h("div", {class: "x", onclick: f}, child, ...)`: text children are text nodes (never parsed as HTML). */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v as EventListener);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function $<T extends HTMLElement = HTMLElement>(sel: string): T {
  const el = document.querySelector(sel);
  if (!el) throw new Error(`missing element ${sel}`);
  return el as T;
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** A number for display: 4 significant digits, plain notation for ordinary sizes. */
export function fmt(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

export function fmtInt(v: number): string {
  return v.toLocaleString("en-US");
}

/** A token with its whitespace made visible (as contrastlens.viz.normalize.visible). */
export function visible(tok: string): string {
  if (tok.trim()) return tok.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  return tok.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

// red supports the target, blue the contrast (contrastlens.viz.normalize.colour)
export const RED: [number, number, number] = [214, 39, 40];
export const BLUE: [number, number, number] = [31, 119, 180];

export function signedColour(v: number, maxAlpha = 0.85): string {
  const a = Math.min(Math.abs(v), 1) * maxAlpha;
  const [r, g, b] = v >= 0 ? RED : BLUE;
  return `rgba(${r},${g},${b},${a.toFixed(3)})`;
}

export function download(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
