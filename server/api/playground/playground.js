// The playground: streams one answer from this server's own POST /v1/chat/completions, in any mode, and
// draws the search behind each committed token set as its chunk arrives (RAIN), each sentence's verdict
// (gated), and, under "Compare", the same message's vanilla answer beside it with both latencies. Model and error text always go in as
// text (textContent, text nodes), never as HTML; the page's Content-Security-Policy refuses inline
// script besides.
"use strict";

const KEY_ITEM = "rain-serve-api-key"; // sessionStorage: the key is forgotten when the tab closes
const BARS = ["iterations", "tree_size", "visits"]; // drawn against the largest value of this answer
const SEARCHING = ["rain", "gated"]; // the modes that read the search fields
const THRESHOLD = ["self_check", "gated"]; // the modes that read the judge's threshold
const $ = (id) => document.getElementById(id);

let controller = null; // aborts the request in flight
let comparing = false; // the last ask was a comparison (asked again once an API key is entered)

// /health is open even under --api-key, and names the model the request must ask for.
const served = fetch("/health")
  .then((response) => response.json())
  .then((health) => {
    $("model").textContent = health.model;
    return health.model;
  });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw); // an empty field is left to the server's default
}

function format(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

// Only the fields the mode reads: the server refuses the others (they would have no effect).
function rainOptions(chosen) {
  if (chosen === "vanilla") return { enabled: false };
  const rain = { preset: $("preset").value };
  if (chosen !== "rain") rain.strategy = chosen;
  if (SEARCHING.includes(chosen)) Object.assign(rain, { max_iters: number("max-iters"), min_iters: number("min-iters") });
  if (THRESHOLD.includes(chosen)) rain.judge_threshold = number("judge-threshold");
  if (chosen === "best_of_n") rain.best_of = number("best-of");
  if (chosen === "gated") rain.gated_search_budget = number("gated-budget");
  return rain;
}

function requestBody(model, chosen) {
  return {
    model,
    messages: [{ role: "user", content: $("message").value }],
    max_tokens: number("max-tokens"),
    seed: number("seed"),
    stream: true,
    rain: rainOptions(chosen),
  };
}

function headers() {
  const key = sessionStorage.getItem(KEY_ITEM);
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

// The data payload of each server-sent event. The server ends lines with "\n"; comment lines
// (": ping", sent while a long search has nothing to commit) are keep-alives and skipped.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (buffer + value).split("\n");
    buffer = lines.pop();
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "" && data.length) {
        yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
    }
  }
  if (data.length) yield data.join("\n");
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error.message === "string") return error;
  } catch (_) {
    // not the OpenAI error shape (a proxy's page, say): show the body as it is
  }
  return { message: text || response.statusText };
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(title, error) {
  const details = [error.type, error.code, error.param && `param: ${error.param}`].filter(Boolean);
  const box = $("error");
  box.replaceChildren(el("strong", "", title), el("p", "message", String(error.message)));
  if (details.length) box.append(el("p", "muted", details.join(" · ")));
  box.hidden = false;
  setStatus("failed");
}

function askForKey(message) {
  $("key-message").textContent = message;
  $("key-form").hidden = false;
  $("api-key").focus();
  setStatus("needs an API key");
}

function reset() {
  for (const id of ["answer", "vanilla-answer", "mode-answer", "vanilla-latency", "mode-latency", "sentence-list"]) {
    $(id).replaceChildren();
  }
  $("commits").tBodies[0].replaceChildren();
  for (const id of ["error", "summary", "sentences"]) $(id).hidden = true;
  $("comparison").hidden = !comparing;
  $("mode-name").textContent = mode();
  $("no-search").hidden = mode() === "rain";
  $("commits").hidden = mode() !== "rain";
}

function bar(className, value) {
  const track = el("span", "track");
  track.append(el("span", "fill"));
  const cell = el("td", `bar ${className}`);
  cell.dataset.value = String(value);
  cell.append(track, el("span", "num", format(value)));
  return cell;
}

// Bars are relative to the largest value so far, so every row is redrawn when a new set arrives.
function rescale() {
  for (const name of BARS) {
    const cells = [...document.querySelectorAll(`#commits td.${name}`)];
    const largest = Math.max(...cells.map((cell) => Number(cell.dataset.value)), 1e-9);
    for (const cell of cells) {
      const share = Math.max(0, Number(cell.dataset.value)) / largest;
      cell.querySelector(".fill").style.width = `${100 * share}%`;
    }
  }
}

// A child's value lies in [-1, 1]: the bar grows from the middle, right when positive, left when not.
function valueCell(value) {
  const cell = bar("value", value);
  const fill = cell.querySelector(".fill");
  const v = Math.max(-1, Math.min(1, Number(value) || 0));
  fill.style.left = `${50 + 50 * Math.min(v, 0)}%`;
  fill.style.width = `${50 * Math.abs(v)}%`;
  cell.classList.add(v < 0 ? "negative" : "positive");
  return cell;
}

function addCommit(text, stats) {
  const rows = $("commits").tBodies[0];
  const row = rows.insertRow();
  const shown = el("td", text ? "text" : "text empty", text || "(no text)");
  row.append(el("td", "index", String(rows.rows.length)), shown, el("td", "tokens", format(stats.tokens)));
  for (const name of BARS) row.append(bar(name, stats[name]));
  row.append(valueCell(stats.value));
  rescale();
}

function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(2)} s` : "–";
}

function costBar(label, value, largest) {
  const row = el("div", "cost-row");
  const track = el("span", "track");
  const fill = el("span", "fill");
  fill.style.width = `${(100 * (value || 0)) / largest}%`;
  track.append(fill);
  row.append(el("span", "label", label), track, el("span", "num", seconds(value)));
  return row;
}

// passed: vanilla's sentence, judged above the threshold; searched: the search's (front-loaded);
// rewritten: the search's, in place of a flagged sentence; refused: the refusal that ends the answer.
function sentenceStatus(sentence, last, outcome) {
  if (last && outcome === "refused") return "refused";
  if (sentence.replaced) return "rewritten";
  return sentence.searched ? "searched" : "passed";
}

function showSentences(summary) {
  const sentences = summary.sentences;
  $("sentence-list").replaceChildren(...sentences.map((sentence, i) => {
    const status = sentenceStatus(sentence, i === sentences.length - 1, summary.outcome);
    const item = el("li", status);
    const flagged = typeof sentence.flagged_value === "number" ? `, replacing one judged ${format(sentence.flagged_value)}` : "";
    item.append(el("span", "mark", status), document.createTextNode(sentence.text),
      el("span", "value", `judge ${format(sentence.value)}${flagged}`));
    return item;
  }));
  $("sentences").hidden = false;
}

function latencyLabel(summary) {
  if (!summary.enabled) return "latency";
  return !summary.strategy || summary.strategy === "rain" ? "RAIN latency" : `${summary.strategy} latency`;
}

function showSummary(summary) {
  const ratio = summary.overhead_ratio;
  $("headline").textContent = typeof ratio === "number"
    ? `${ratio.toFixed(1)}× the latency of vanilla decoding`
    : "Vanilla decoding: no search, no overhead";
  const largest = Math.max(summary.worker_s || 0, summary.vanilla_estimate_s || 0, 1e-9);
  $("cost").replaceChildren(
    costBar(latencyLabel(summary), summary.worker_s, largest),
    costBar("vanilla estimate", summary.vanilla_estimate_s, largest),
  );
  const facts = [
    ["finish", summary.finish_reason],
    ...(summary.outcome ? [["outcome", summary.outcome]] : []),
    ["tokens", summary.completion_tokens],
    ["commits", summary.commits],
    ["iterations", summary.iterations],
    ["self-evaluations", summary.self_evaluations],
    ["queue", seconds(summary.queue_s)],
  ];
  $("facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", "", name), el("dd", "", format(value))]));
  if (summary.sentences) showSentences(summary);
  $("summary").hidden = false;
}

// A chunk's text goes to every element of `answers`; the details panels follow only the `detailed` answer.
function show(chunk, answers, detailed) {
  const choice = (chunk.choices || [])[0];
  const text = (choice && choice.delta && choice.delta.content) || "";
  for (const answer of answers) answer.append(text);
  if (!detailed) return;
  const rain = chunk.rain || {};
  if ("tokens" in rain && mode() === "rain") addCommit(text, rain);
  // The last set carries the request's summary; a search stopped by cancellation sends it bare.
  const summary = rain.summary || ("overhead_ratio" in rain ? rain : null);
  if (summary) showSummary(summary);
  const commits = $("commits").tBodies[0].rows.length;
  if (choice && choice.finish_reason) setStatus(`finished (${choice.finish_reason})`);
  else if (commits) setStatus(`${commits} set${commits === 1 ? "" : "s"} committed…`);
}

// Whether the stream ran to its [DONE].
async function stream(response, answers, detailed) {
  for await (const data of events(response.body)) {
    if (data === "[DONE]") return true;
    const chunk = JSON.parse(data);
    if (chunk.error) {
      showError("The answer stopped with an error", chunk.error);
      return false;
    }
    show(chunk, answers, detailed);
  }
  return false;
}

// One streamed answer in mode `chosen`: the seconds from sending it to its [DONE], or null when it failed.
async function post(chosen, answers, detailed) {
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(requestBody(await served, chosen)),
    signal: controller.signal,
  });
  if (response.status === 401) {
    const refused = sessionStorage.getItem(KEY_ITEM) !== null;
    sessionStorage.removeItem(KEY_ITEM);
    askForKey(refused ? "The server refused that API key; enter it again." : "This server needs an API key.");
    return null;
  }
  if (!response.ok) {
    showError(`HTTP ${response.status}`, await errorOf(response));
    return null;
  }
  return (await stream(response, answers, detailed)) ? (performance.now() - started) / 1000 : null;
}

// Compared, the vanilla answer runs first and alone, so that neither latency includes the other's work.
async function ask() {
  reset();
  $("send").disabled = $("compare").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  try {
    const answers = [$("answer")];
    if (comparing) {
      setStatus("vanilla first…");
      const took = await post("vanilla", [$("vanilla-answer")], false);
      if (took === null) return;
      $("vanilla-latency").textContent = seconds(took);
      answers.push($("mode-answer"));
    }
    setStatus("searching…");
    const took = await post(mode(), answers, true);
    if (comparing && took !== null) $("mode-latency").textContent = seconds(took);
  } catch (error) {
    if (error.name === "AbortError") setStatus("stopped");
    else showError("The request failed", { message: String(error.message || error) });
  } finally {
    controller = null;
    $("send").disabled = false;
    $("compare").disabled = mode() === "vanilla";
    $("stop").disabled = true;
  }
}

function optionsFor(chosen) {
  $("rain-options").disabled = !SEARCHING.includes(chosen);
  $("judge-options").disabled = chosen === "vanilla";
  $("judge-threshold").disabled = !THRESHOLD.includes(chosen);
  $("best-of").disabled = chosen !== "best_of_n";
  $("gated-budget").disabled = chosen !== "gated";
  $("compare").disabled = chosen === "vanilla";
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  comparing = false;
  ask();
});
$("compare").addEventListener("click", () => {
  comparing = true;
  ask();
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("ask").requestSubmit();
});
$("stop").addEventListener("click", () => controller && controller.abort());
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => optionsFor(mode()));
}
optionsFor(mode());
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("api-key").value = "";
  $("key-form").hidden = true;
  ask();
});
served.catch((error) => showError("The server's /health did not answer", { message: String(error.message || error) }));
