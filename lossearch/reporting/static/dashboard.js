// lossearch serve: the page polls /api/stamp and redraws from /api/state and /api/charts when the store
// has changed. Every string from the store is inserted as text (textContent), never as markup; the charts
// are SVG drawn by matplotlib on the server, which escapes the text it writes.
"use strict";

let stamp = null;
let chartsStamp = null;
let selected = null;
let pollMs = 2000;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function num(value, spread, digits = 4) {
  if (value === null || value === undefined) return "-";
  const text = Number(value).toPrecision(digits).replace(/\.?0+$/, "").replace(/\.?0+e/, "e");
  return spread ? `${text} ± ${Number(spread).toPrecision(2)}` : text;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function renderFacts(state) {
  const campaign = state.campaign;
  document.getElementById("campaign-name").textContent = campaign.name;
  document.title = `lossearch ${campaign.name}`;
  const facts = document.getElementById("facts");
  facts.replaceChildren();
  const statuses = Object.entries(state.statuses).map(([status, count]) => `${count} ${status}`).join(", ");
  const items = [
    ["status", campaign.status + (campaign.stop_reason ? ` (${campaign.stop_reason})` : "")],
    ["task", campaign.task], ["proposer", campaign.proposer ?? "-"],
    ["generation", `${campaign.generation} of ${campaign.generations ?? "-"}`],
    ["candidates", statuses || "none yet"], ["evaluations", state.evaluations],
    ["confirmed discoveries", state.confirmed],
    ["LLM", `${state.llm.calls} calls, ${state.llm.tokens} tokens, $${state.llm.cost.toFixed(2)}`],
  ];
  if (state.sampled_from) {  // a large campaign: the charts draw a sample, the counts and leaderboard are whole
    items.push(["charts", `drawn from ${state.charted} of ${state.sampled_from} candidates (a uniform sample, ` +
                          "its parents, the seeds and the leaderboard's rows)"]);
  }
  for (const [key, value] of items) {
    const span = el("span");
    span.append(el("b", `${key}: `), document.createTextNode(String(value)));
    facts.append(span);
  }
}

function renderLeaderboard(state) {
  const body = document.querySelector("#leaderboard tbody");
  body.replaceChildren();
  for (const row of state.leaderboard) {
    const tr = el("tr", null, row.is_seed ? "seed" : "");
    tr.dataset.id = row.id;
    if (row.id === selected) tr.classList.add("selected");
    const cells = [
      [row.rank ?? "-", "n"], [row.id, "n"], [row.name + (row.is_seed ? " (seed)" : ""), ""],
      [num(row.fitness, row.fitness_std), "n"], [num(row.reward), "n"], [num(row.kl, null, 3), "n"],
      [row.verdict, row.verdict.replace(" ", "-")], [row.tier ?? "-", ""], [row.generation, "n"],
      [row.proposer + (row.model ? `:${row.model}` : ""), ""],
    ];
    for (const [text, className] of cells) tr.append(el("td", text, className));
    tr.addEventListener("click", () => openCandidate(row.id));
    body.append(tr);
  }
  const more = state.leaderboard_total - state.leaderboard.length;
  document.getElementById("leaderboard-more").textContent =
    more > 0 ? `${more} more rows: lossearch leaderboard lists them all.` : "";
}

function renderNotes(notes) {
  const box = document.getElementById("notes");
  box.replaceChildren();
  for (const note of notes) {
    box.append(el("h3", `before generation ${note.generation}, by ${note.author}`), el("pre", note.text));
  }
  document.getElementById("notes-section").hidden = notes.length === 0;
}

function setChart(id, svg) {
  const node = document.getElementById(id);
  if (node) node.innerHTML = svg || "";  // matplotlib's SVG (server-drawn; its text is escaped there)
}

function renderCharts(drawn) {
  setChart("chart-lineage", drawn.lineage);
  setChart("chart-fitness", drawn.fitness);
  setChart("chart-time", drawn.time);
  setChart("chart-reward-kl", (drawn.reward_kl || []).join(""));
  setChart("chart-operators", drawn.operators);
  setChart("chart-instructions", drawn.instructions);
  setChart("chart-models", drawn.models);
  setChart("chart-throughput", drawn.throughput);
  setChart("chart-failures", drawn.failures);
  setChart("chart-llm", drawn.llm);
  for (const link of document.querySelectorAll("#chart-lineage a")) {
    const href = link.getAttribute("xlink:href") || link.getAttribute("href") || "";
    const match = href.match(/^#candidate-(\d+)$/);
    if (!match) continue;
    link.addEventListener("click", (event) => { event.preventDefault(); openCandidate(Number(match[1])); });
  }
}

function diffBlock(diff) {
  const pre = el("pre");
  for (const line of diff.split("\n")) {
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    pre.append(el("span", line + "\n", kind));
  }
  return pre;
}

async function openCandidate(id) {
  selected = id;
  history.replaceState(null, "", `#candidate-${id}`);
  for (const tr of document.querySelectorAll("#leaderboard tbody tr")) {
    tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  }
  const panel = document.getElementById("candidate");
  let report;
  try {
    report = await getJson(`/api/candidate/${id}`);
  } catch (error) {
    panel.hidden = false;
    document.getElementById("candidate-title").textContent = `#${id}: cannot load it (${error.message})`;
    return;
  }
  if (selected !== id) return;  // another click came first
  panel.hidden = false;
  document.getElementById("candidate-title").textContent = `#${report.id} ${report.name}`;
  const score = report.score;
  document.getElementById("candidate-facts").textContent = [
    `generation ${report.generation}, island ${report.island}`, `${report.status} at tier ${report.tier ?? "-"}`,
    `by ${report.proposer}${report.model ? ` (${report.model})` : ""}`,
    score ? `fitness ${num(score.fitness, score.spread)} on ${score.task} (${score.tier})` : "no fitness",
    report.rank ? `rank ${report.rank}` : "unranked", `verdict: ${report.verdict}`,
    report.failure_kind ? `${report.failure_kind}: ${report.failure_message}` : "",
  ].filter(Boolean).join(" · ");
  document.getElementById("candidate-idea").textContent = `idea: ${report.idea || "-"}`;
  document.getElementById("candidate-code").textContent = report.source;
  const diffs = document.getElementById("candidate-diffs");
  diffs.replaceChildren();
  for (const diff of report.diffs) {
    diffs.append(el("h3", `Diff to parent #${diff.parent} ${diff.name} (${diff.relation})`));
    diffs.append(diffBlock(diff.diff || "(the same code)"));
  }
  const body = document.querySelector("#candidate-evaluations tbody");
  body.replaceChildren();
  for (const row of report.evaluations) {
    const tr = el("tr");
    for (const [text, className] of [[row.tier, ""], [row.task, ""], [row.seed, "n"],
      [num(row.fitness, row.fitness_std), "n"], [num(row.reward), "n"], [num(row.kl, null, 3), "n"],
      [num(row.beta, null, 3), "n"], [Number(row.seconds).toFixed(1), "n"], [row.failure ?? "", ""]]) {
      tr.append(el("td", text, className));
    }
    body.append(tr);
  }
  document.getElementById("candidate-fingerprint-text").textContent =
    report.fingerprint_summary ? report.fingerprint_summary.text : "no fingerprint (it did not pass the sanity tier)";
  setChart("candidate-fingerprint", report.fingerprint_svg);
  const relatives = document.getElementById("candidate-relatives");
  relatives.replaceChildren();
  for (const [what, list] of [["parent", report.parents], ["child", report.children]]) {
    for (const relative of list) {
      const item = el("li");
      const link = el("a", `#${relative.id} ${relative.name}`);
      link.href = `#candidate-${relative.id}`;
      link.addEventListener("click", (event) => { event.preventDefault(); openCandidate(relative.id); });
      const delta = relative.delta === null ? "" : `, Δ ${relative.delta >= 0 ? "+" : ""}${relative.delta.toFixed(4)}`;
      item.append(document.createTextNode(`${what} (${relative.relation}): `), link,
        document.createTextNode(` fitness ${num(relative.fitness)}${delta}`));
      relatives.append(item);
    }
  }
  if (!relatives.children.length) relatives.append(el("li", "none (a seed of the library)"));
}

async function refresh() {
  const live = document.getElementById("live");
  try {
    const now = await getJson("/api/stamp");
    if (now.stamp !== stamp) {
      const state = await getJson("/api/state");
      pollMs = 1000 * (state.poll_seconds || 2);
      renderFacts(state);
      renderLeaderboard(state);
      renderNotes(state.notes || []);
      const drawn = await getJson("/api/charts");
      if (drawn.stamp !== chartsStamp) {
        chartsStamp = drawn.stamp;
        renderCharts(drawn);
      }
      stamp = state.stamp;  // only once everything of this stamp is shown: a failed fetch is retried
    }
    live.textContent = `live: checked ${new Date().toLocaleTimeString()}, polling every ${pollMs / 1000} s`;
    live.classList.remove("stale");
  } catch (error) {
    live.textContent = `cannot reach the server (${error.message}); retrying`;
    live.classList.add("stale");
  }
  setTimeout(refresh, pollMs);
}

document.addEventListener("DOMContentLoaded", () => {
  const match = location.hash.match(/^#candidate-(\d+)$/);
  refresh().then(() => { if (match) openCandidate(Number(match[1])); });
});
