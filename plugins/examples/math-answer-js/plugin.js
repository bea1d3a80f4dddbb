// math-answer in JavaScript: 1 when the completion's final answer equals the example's
// `answer` column, 0 when not, null (no opinion) without one. A line-for-line port of
// plugins/math-answer/src/answer.rs; tests check that both give the same scores.
import { reward, ConfigError } from "galley-sdk";

const DEFAULTS = { answer_key: "answer", correct: 1.0, incorrect: 0.0, fallback_last_number: true };
const isDigit = (c) => c >= "0" && c <= "9";
const asciiLower = (c) => (c >= "A" && c <= "Z" ? c.toLowerCase() : c);

function lowerEq(text, at, word) {
  if (at + word.length > text.length) return false;
  for (let k = 0; k < word.length; k++) if (asciiLower(text[at + k]) !== word[k]) return false;
  return true;
}

function phraseAt(text, i) {
  if (!lowerEq(text, i, "answer")) return null;
  const after = i + 6;
  if (text[after] === ":") return after + 1;
  const preceded = (i >= 4 && lowerEq(text, i - 4, "the ")) || (i >= 6 && lowerEq(text, i - 6, "final "));
  return preceded && lowerEq(text, after, " is") ? after + 3 : null;
}

function balanced(text, start) {
  let depth = 1;
  for (let i = start; i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}" && --depth === 0) return text.slice(start, i).trim();
  }
  return null;
}

function sentence(text, start) {
  let end = text.length;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (c === "\n" || c === "<" || (c === "." && !(i + 1 < text.length && isDigit(text[i + 1])))) { end = i; break; }
  }
  const out = text.slice(start, end).trim().replace(/^:+/, "").trim();
  return out || null;
}

function lastNumber(text) {
  let end = -1;
  for (let i = text.length - 1; i >= 0; i--) if (isDigit(text[i])) { end = i + 1; break; }
  if (end < 0) return null;
  let start = end;
  while (start > 0) {
    const b = text[start - 1];
    const inner = start - 1 > 0 && isDigit(text[start - 2]);
    if (isDigit(b) || ((b === "," || b === "." || b === "/") && inner)) start--;
    else break;
  }
  if (start > 0 && text[start - 1] === "-") start--;
  return text.slice(start, end);
}

function extract(text, fallback) {
  let boxed = null, hashes = null, phraseEnd = null;
  for (let i = text.length - 1; i >= 0; i--) {
    const c = text[i];
    if (c === "\\" && boxed === null && text.startsWith("\\boxed{", i)) boxed = i + 7;
    else if (c === "#" && hashes === null && text.startsWith("####", i)) hashes = i + 4;
    else if ((c === "a" || c === "A") && phraseEnd === null) phraseEnd = phraseAt(text, i);
  }
  if (boxed !== null) { const a = balanced(text, boxed); if (a !== null) return a; }
  if (hashes !== null) {
    const rest = text.slice(hashes).split("\n")[0].split("<")[0].trim();
    if (rest) return rest;
  }
  if (phraseEnd !== null) { const a = sentence(text, phraseEnd); if (a !== null) return a; }
  return fallback ? lastNumber(text) : null;
}

const PLAIN = /^[A-Za-z0-9\-\/ .%]*$/;

function normalize(answer) {
  let s = answer.trim();
  if (PLAIN.test(s) && !s.endsWith(".")) return s;
  if (s.includes("\\")) {
    for (const wrapper of ["\\text{", "\\mathrm{", "\\textbf{", "\\boxed{"]) {
      let p;
      while ((p = s.indexOf(wrapper)) >= 0) {
        const start = p + wrapper.length;
        const q = s.indexOf("}", start);
        if (q < 0) break;
        s = s.slice(0, p) + s.slice(start, q) + s.slice(q + 1);
      }
    }
    for (const [a, b] of [["\\dfrac", "\\frac"], ["\\tfrac", "\\frac"], ["\\!", ""], ["\\,", ""], ["\\$", ""]]) s = s.split(a).join(b);
  }
  let t = s.trim().replace(/\.+$/, "").trim();
  if (t.startsWith("+")) t = t.slice(1);
  let out = "";
  for (let i = 0; i < t.length; i++) {
    const c = t[i];
    if (c === "$" || c === "\u20ac" || c === "\u00a3") continue;
    if (c === "\u2212") out += "-";
    else if (c === ",") {
      const digitBefore = i > 0 && isDigit(t[i - 1]);
      const threeAfter = t.length >= i + 4 && isDigit(t[i + 1]) && isDigit(t[i + 2]) && isDigit(t[i + 3]) && !(i + 4 < t.length && isDigit(t[i + 4]));
      if (!(digitBefore && threeAfter)) out += ",";
    } else out += c;
  }
  return out.trim();
}

// Rust's f64 parser: optional sign, digits with an optional point, optional exponent, or
// inf/infinity/nan; the caller drops the non-finite ones.
const FLOAT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function parseFloatStrict(s) {
  s = s.trim();
  if (!FLOAT.test(s)) return null;
  const v = Number(s);
  return Number.isFinite(v) ? v : null;
}

function numeric(answer) {
  const s = answer.trim().replace(/%+$/, "").trim();
  if (s.startsWith("\\frac{") || s.startsWith("-\\frac{")) {
    const negative = s.startsWith("-");
    const rest = s.slice(negative ? 7 : 6);
    const close = rest.indexOf("}");
    if (close < 0) return null;
    const num = rest.slice(0, close), tail = rest.slice(close + 1);
    if (!(tail.startsWith("{") && tail.endsWith("}"))) return null;
    const a = parseFloatStrict(num), b = parseFloatStrict(tail.slice(1, -1));
    if (a === null || b === null) return null;
    const v = a / b;
    return negative ? -v : v;
  }
  const slash = s.indexOf("/");
  if (slash >= 0) {
    const a = parseFloatStrict(s.slice(0, slash)), b = parseFloatStrict(s.slice(slash + 1));
    if (a === null || b === null) return null;
    const v = a / b;
    return Number.isFinite(v) ? v : null;
  }
  return parseFloatStrict(s);
}

const INT = /^[+-]?\d+$/;

function sameAnswer(predicted, truth) {
  const p = normalize(predicted), t = normalize(truth);
  if (INT.test(p) && INT.test(t)) {
    const a = BigInt(p), b = BigInt(t);
    const fits = (x) => x >= -(2n ** 63n) && x < 2n ** 63n;
    if (fits(a) && fits(b)) return a === b;
  }
  const x = numeric(p), y = numeric(t);
  if (x !== null && y !== null) return Math.abs(x - y) <= 1e-6 * Math.max(Math.abs(y), 1.0);
  if (x === null && y === null) {
    const squash = (s) => s.replace(/\s+/g, "").toLowerCase();
    return squash(p) === squash(t);
  }
  return false;
}

function truthOf(raw) {
  const p = raw.lastIndexOf("####");
  return p >= 0 ? raw.slice(p + 4).trim() : raw.trim();
}

function asText(v) {
  if (typeof v === "string") return v;
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") return Number.isInteger(v) ? v.toFixed(0) : String(v);
  return null;
}

reward((completion, columns) => {
  const config = columns.config || {};
  const unknown = Object.keys(config).filter((k) => !(k in DEFAULTS));
  if (unknown.length) throw new ConfigError(`unknown setting(s): ${unknown.sort().join(", ")}`);
  const cfg = { ...DEFAULTS, ...config };
  const raw = asText(columns[cfg.answer_key]);
  if (raw === null) return null;
  const truth = truthOf(raw);
  if (!truth) return null;
  const answer = extract(completion, cfg.fallback_last_number);
  return answer !== null && sameAnswer(answer, truth) ? cfg.correct : cfg.incorrect;
});
