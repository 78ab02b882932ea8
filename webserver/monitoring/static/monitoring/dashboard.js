/*
 * The training dashboard: polls the dashboard API every 2 s (every 10 s once the
 * run is over) and redraws status, infrastructure, rounds, charts, participants,
 * the sites' privacy reports and logs. Everything shown comes from the coordinator, which runs the problem's
 * own code, so it is inserted as text, never as HTML.
 *
 * The page arrives without rounds. The first request fetches them all; later ones
 * send `since` and get only the rounds after it, so a poll costs the same at round
 * 2,000 as at round 2. A round already shown can still change (its model is
 * uploaded after the round ends, a resumed coordinator reports it again), so the
 * last few rounds, and recent ones still without a model, are always asked for
 * again. Another run, or a run whose rounds went back, means a full reload.
 */
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  if (!root) return;
  const API = root.dataset.api;
  const METRICS_API = root.dataset.metricsApi;
  const ACTIVE = new Set(["queued", "starting", "running", "stopping"]);
  const FAST = 2000;
  const SLOW = 10000;
  const TABLE_ROWS = 50; // the table shows the latest rounds; "show all" shows the rest
  const RECHECK = 2; // rounds always asked for again
  const MODEL_WINDOW = 10; // how far back a round without a model yet is asked for again
  const REJECTED_WHY = "Client replies the coordinator refused as malformed or hostile (NaN/Inf, wrong shapes, …)";
  const NO_RESULTS_WHY = "Replies were asked for and not one was accepted: this round added nothing to the model.";
  const COLUMNS = 9;
  const POLICY_WHY = {
    strict: "the platform's checks on top of Flower's: replies with arrays unlike the model's, NaN or Inf, " +
      "or no weight from 1 to 10^12 are rejected",
    flower: "the ServerApp gets every reply Flower's runtime would deliver",
  };

  const state = {
    run: root.dataset.run || "",
    compare: new Set(),
    data: null,
    compared: [],
    rounds: null, // every round of state.runNumber we have, in order
    runNumber: null,
    attempts: [], // each start of the coordinator: {attempt, first_round}
    showAll: false,
  };
  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  function node(tag, text, className) {
    const n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (className) n.className = className;
    return n;
  }

  function cell(row, text, className) {
    row.appendChild(node("td", text, className));
  }

  function badge(value) {
    return node("span", value, `badge ${value}`);
  }

  function link(href, text) {
    const a = node("a", text);
    a.href = href;
    return a;
  }

  // A model's signed provenance manifest, to put after its link (nothing from a server that has none).
  function manifest(href) {
    if (!href) return [];
    const a = link(href, "manifest");
    a.className = "manifest";
    a.title = "signed provenance manifest of this file; check both with fedota-verify";
    return [" (", a, ")"];
  }

  function fill(tbody, rows, columns, empty) {
    if (!rows.length) {
      const tr = node("tr");
      const td = node("td", empty, "muted");
      td.colSpan = columns;
      tr.appendChild(td);
      tbody.replaceChildren(tr);
      return;
    }
    tbody.replaceChildren(...rows);
  }

  function renderStatus(d) {
    const run = d.run;
    const box = $("run-status");
    if (!run) {
      box.replaceChildren(node("p", "No run yet. This page updates by itself once one starts.", "muted"));
      return;
    }
    const line = node("p");
    const status = badge(run.status);
    status.textContent = run.status_label;
    // The run picker above was rendered with the page; keep its badge for this run current.
    const picked = document.querySelector(`[data-run-badge="${run.number}"]`);
    if (picked) {
      picked.className = `badge ${run.status}`;
      picked.textContent = run.status_label;
    }
    line.append(`Run ${run.number} `, status, ` · round ${run.current_round}`);
    if (run.total_rounds) line.append(` of ${run.total_rounds}`);
    if (run.phase) line.append(" · ", node("span", run.phase, "muted"));
    line.append(` · ${d.clients_connected} client${d.clients_connected === 1 ? "" : "s"} connected`);
    const rejected = d.rejected || { replies: 0, rounds: 0 };
    if (rejected.replies) {
      const flag = node("span", `${rejected.replies} repl${rejected.replies === 1 ? "y" : "ies"} rejected`, "badge rejected");
      flag.id = "rejected-replies";
      flag.title = `${REJECTED_WHY}, in ${rejected.rounds} round${rejected.rounds === 1 ? "" : "s"}; ` +
        "they were left out of the model. See the coordinator log.";
      line.append(" · ", flag);
    }
    const parts = [line];
    if (run.status_detail) parts.push(node("p", run.status_detail, run.status === "failed" ? "error" : "muted"));
    if (run.restart_count) {
      const last = run.restarts[run.restarts.length - 1];
      const p = node("p", `${run.restart_count} restart${run.restart_count === 1 ? "" : "s"} of dead services; ` +
        `the latest: ${last.service} (${last.reason}). Each is in the events below.`, "muted");
      p.id = "restarts";
      parts.push(p);
    }
    const policy = run.reply_policy || { name: "", reported: false };
    if (policy.name) {
      const p = node("p");
      p.id = "reply-policy";
      const why = (POLICY_WHY[policy.name] || "") +
        (policy.reported ? "" : "; as configured, not yet confirmed by the coordinator");
      p.append("Reply policy: ", node("strong", policy.name), " ", node("span", `(${why})`, "muted"));
      parts.push(p);
    }
    const dl = node("p");
    dl.append(link(run.metrics_csv, "Metrics as CSV"));
    if (d.final_model.pt || d.final_model.npz) {
      if (d.final_model.round) {
        const what = node("span", `last completed model (round ${d.final_model.round}; ` +
          `the run ${run.status_label.toLowerCase()} before its final model)`);
        what.id = "last-model";
        dl.append(" · ", what, ": ");
      } else {
        dl.append(" · final model: ");
      }
      if (d.final_model.pt) dl.append(link(d.final_model.pt, "PyTorch .pt"), ...manifest(d.final_model.pt_manifest));
      if (d.final_model.pt && d.final_model.npz) dl.append(" · ");
      if (d.final_model.npz) dl.append(link(d.final_model.npz, "NumPy .npz"), ...manifest(d.final_model.npz_manifest));
    }
    parts.push(dl);
    box.replaceChildren(...parts);
  }

  function renderServices(d) {
    const rows = d.services.map((s) => {
      const tr = node("tr");
      cell(tr, s.role);
      cell(tr, s.index);
      cell(tr, s.address || "–");
      const td = node("td");
      td.appendChild(badge(s.health));
      if (s.detail) td.append(" ", node("span", s.detail, "muted"));
      tr.appendChild(td);
      cell(tr, s.clients_connected);
      return tr;
    });
    fill($("services-body"), rows, 5, "No services recorded for this run.");
  }

  function renderRounds() {
    const all = state.rounds || [];
    const shown = state.showAll ? all : all.slice(-TABLE_ROWS);
    const rows = shown.slice().reverse().flatMap((r) => {
      const tr = node("tr", null, r.no_results ? "no-results" : "");
      tr.dataset.round = String(r.round);
      cell(tr, r.round);
      const began = state.attempts.find((a) => a.attempt === r.attempt && a.attempt > 1);
      if (began && began.first_round === r.round) {
        // Where a restarted coordinator took over: resumed from its checkpoint, or from round 1.
        const resumed = r.round > 1;
        const flag = node("span", resumed ? `resumed (attempt ${r.attempt})` : `restarted (attempt ${r.attempt})`, "badge resumed");
        flag.title = resumed
          ? `The coordinator was restarted and resumed after round ${r.round - 1} from its checkpoint.`
          : "The coordinator was restarted and its app could not resume: training began again at round 1.";
        tr.lastChild.append(" ", flag);
        tr.dataset.attempt = String(r.attempt);
      }
      cell(tr, r.clients);
      const results = node("td");
      if (r.no_results) {
        const flag = node("span", "no results", "badge rejected");
        flag.title = NO_RESULTS_WHY;
        results.append(flag);
      } else {
        results.append(r.results === null || r.results === undefined ? "–" : String(r.results));
      }
      tr.appendChild(results);
      cell(tr, fmt(r.train_loss, 4));
      cell(tr, fmt(r.eval_loss, 4));
      cell(tr, fmt(r.eval_acc, 4));
      cell(tr, fmt(r.seconds, 1));
      const reasons = reasonLines(r);
      cell(tr, r.rejected, r.rejected ? "rejected" : "muted");
      if (r.rejected) tr.lastChild.title = reasons.length ? reasons.join("\n") : `${REJECTED_WHY}; see the coordinator log.`;
      const td = node("td");
      if (r.downloads.pt) td.append(link(r.downloads.pt, ".pt"), ...manifest(r.downloads.pt_manifest));
      if (r.downloads.pt && r.downloads.npz) td.append(" · ");
      if (r.downloads.npz) td.append(link(r.downloads.npz, ".npz"), ...manifest(r.downloads.npz_manifest));
      if (!r.downloads.pt && !r.downloads.npz) td.append(node("span", "–", "muted"));
      tr.appendChild(td);
      if (!reasons.length && !r.no_results) return [tr];
      // The reasons in full under the round: a tooltip alone is out of reach on a touch screen.
      const detail = node("tr", null, "round-detail");
      detail.dataset.detailOf = String(r.round);
      const dd = node("td");
      dd.colSpan = COLUMNS;
      if (r.no_results) dd.append(node("p", `Round ${r.round}: no results. ${NO_RESULTS_WHY}`, "error"));
      if (reasons.length) {
        dd.append(node("span", `Rejected in round ${r.round}:`, "muted"));
        const list = node("ul", null, "reasons");
        for (const line of reasons) list.append(node("li", line));
        dd.append(list);
      }
      detail.appendChild(dd);
      return [tr, detail];
    });
    fill($("rounds-body"), rows, COLUMNS, "No round has finished yet.");
    const more = $("rounds-more");
    more.hidden = all.length <= TABLE_ROWS;
    if (more.hidden) return;
    const toggle = $("rounds-toggle");
    $("rounds-shown").textContent = state.showAll
      ? `All ${all.length} rounds shown.`
      : `The latest ${TABLE_ROWS} of ${all.length} rounds shown (the CSV has every round).`;
    toggle.textContent = state.showAll ? `Show the latest ${TABLE_ROWS} only` : `Show all ${all.length} rounds`;
    toggle.setAttribute("aria-expanded", String(state.showAll));
  }

  // "reason ×count", most common first, and what the coordinator left out (it sends its 10 most common reasons).
  function reasonLines(r) {
    const entries = Object.entries(r.rejected_reasons || {}).sort((a, b) => b[1] - a[1]);
    const lines = entries.map(([reason, n]) => `${reason} ×${n}`);
    const listed = entries.reduce((sum, [, n]) => sum + n, 0);
    if (lines.length && r.rejected > listed) lines.push(`other reasons ×${r.rejected - listed}`);
    return lines;
  }

  $("rounds-toggle").addEventListener("click", () => {
    state.showAll = !state.showAll;
    renderRounds();
  });

  function renderParticipants(d) {
    const rows = d.participants.map((p) => {
      const tr = node("tr");
      cell(tr, p.site);
      if (p.stopped_for_budget) {
        const flag = node("span", "stopped for budget", "badge exhausted");
        flag.title = "The site's privacy budget is spent: it stopped training (see Privacy below).";
        tr.lastChild.append(" ", flag);
      }
      cell(tr, p.last_round === null ? "–" : p.last_round);
      cell(tr, p.last_kind || "–");
      cell(tr, p.rounds);
      return tr;
    });
    fill($("participants-body"), rows, 4, "No participant yet.");
    // Only the most recently active sites are listed; the line counts the rest (and links them all).
    const s = d.participants_summary || { total: 0, shown: 0 };
    const line = $("participants-summary");
    line.replaceChildren();
    line.hidden = s.total <= s.shown;
    if (!line.hidden) {
      let text = `The ${s.shown} most recently active of ${s.total} sites`;
      if (s.latest_round) text += `; ${s.in_latest_round} contributed to round ${s.latest_round}`;
      if (s.never) text += `; ${s.never} never contributed`;
      line.append(text + ". ");
      if (d.run) line.append(link(d.run.participants_csv, "All sites as CSV"));
    }
  }

  // Numbers as the page renders them (the privacy_number filter): at most 3 decimals, tiny ones as 1e-5.
  function num(v) {
    if (v === null || v === undefined) return "–";
    const n = Number(v);
    if (n !== 0 && Math.abs(n) < 1e-3) return n.toExponential();
    return String(Number(n.toFixed(3)));
  }

  function renderPrivacy(d) {
    const s = d.privacy_summary || { requirement: {}, requirement_text: "", total: 0, shown: 0, exhausted: 0 };
    $("privacy-requirement").textContent = `Requirement: ${s.requirement_text}`;
    const rows = (d.privacy || []).map((r) => {
      const tr = node("tr");
      tr.dataset.siteState = r.state;
      cell(tr, r.site);
      cell(tr, num(r.epsilon));
      cell(tr, num(r.delta));
      if (r.epsilon_cap === null) cell(tr, "none", "muted"); else cell(tr, num(r.epsilon_cap));
      cell(tr, num(r.noise_multiplier));
      cell(tr, num(r.clipping_norm));
      cell(tr, `${r.run_releases} / ${r.releases}`);
      const td = node("td");
      if (r.state === "exhausted") {
        td.append(node("span", "stopped for budget", "badge exhausted"));
        if (r.reason) td.append(" ", node("span", r.reason, "muted"));
      } else {
        td.append(node("span", "active", "badge active"));
      }
      tr.appendChild(td);
      return tr;
    });
    let empty = "No site reported a privacy budget in this run.";
    if (s.requirement && s.requirement.min_noise_multiplier) {
      empty += " This problem requires noise of every site: a site that reports nothing is running an older client.";
    }
    fill($("privacy-body"), rows, 8, empty);
    const line = $("privacy-summary");
    let text = s.exhausted ? `${s.exhausted} site${s.exhausted === 1 ? "" : "s"} stopped for budget. ` : "";
    if (s.total > s.shown) text += `The first ${s.shown} of ${s.total} sites are listed (those stopped for budget first).`;
    line.textContent = text;
    line.hidden = !text;
  }

  function renderLogs(d) {
    const list = $("log-lines");
    const items = d.logs.map((l) => {
      const li = node("li", null, `log-${l.level.toLowerCase()}`);
      li.append(
        node("time", new Date(l.ts).toLocaleTimeString()),
        " ",
        node("span", l.level, "log-level"),
        " ",
        node("span", l.message),
      );
      return li;
    });
    if (!items.length) items.push(node("li", "No log lines yet.", "muted"));
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    list.replaceChildren(...items);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function renderCompare(d) {
    const box = $("compare-runs");
    const current = d.run ? d.run.number : null;
    const others = d.runs.filter((r) => r.number !== current);
    if (!others.length) {
      box.replaceChildren(node("span", "No other run of this problem to compare with.", "muted"));
      return;
    }
    const labels = others.map((r) => {
      const label = node("label", null, "compare-run");
      const input = node("input");
      input.type = "checkbox";
      input.value = String(r.number);
      input.checked = state.compare.has(r.number);
      input.addEventListener("change", () => {
        if (input.checked) state.compare.add(r.number); else state.compare.delete(r.number);
        refreshCompared().then(drawCharts);
      });
      label.append(input, ` run ${r.number} `, node("span", `(${r.status})`, "muted"));
      return label;
    });
    box.replaceChildren(...labels);
  }

  function drawCharts() {
    const d = state.data;
    if (!d) return;
    const runs = [];
    if (d.run) runs.push({ number: d.run.number, rounds: state.rounds || [], current: true });
    for (const r of state.compared) if (!d.run || r.number !== d.run.number) runs.push(r);
    // A zoom, a pan or a series hidden in the legend lasts across polls, until another run is shown.
    const revision = d.run ? `run ${d.run.number}` : "no run";
    window.FedotaCharts.draw({ loss: $("chart-loss"), acc: $("chart-acc") }, runs, revision);
  }

  async function refreshCompared() {
    const numbers = [...state.compare];
    if (!numbers.length) {
      state.compared = [];
      return;
    }
    const resp = await fetch(`${METRICS_API}?runs=${numbers.join(",")}`, {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (resp.ok) state.compared = await resp.json();
  }

  function render(d, roundsChanged) {
    state.data = d;
    renderStatus(d);
    renderServices(d);
    if (roundsChanged) renderRounds();
    renderParticipants(d);
    renderPrivacy(d);
    renderLogs(d);
    renderCompare(d);
    if (roundsChanged) drawCharts();
  }

  // The `since` to ask with: the last rounds again, and recent rounds whose model has not arrived.
  function sinceFor(rounds) {
    if (!rounds.length) return 0;
    const last = rounds[rounds.length - 1].round;
    let since = last - RECHECK;
    for (let i = rounds.length - 1; i >= 0 && rounds[i].round > last - MODEL_WINDOW; i--) {
      const r = rounds[i];
      if (!r.downloads.npz && !r.downloads.pt) since = Math.min(since, r.round - 1);
    }
    return Math.max(0, since);
  }

  async function fetchDashboard(since) {
    const params = new URLSearchParams();
    if (state.run) params.set("run", state.run);
    if (since !== null) params.set("since", String(since));
    const query = params.toString();
    const resp = await fetch(query ? `${API}?${query}` : API, {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
    return resp.json();
  }

  // Merges the answer into state.rounds; true when the rounds shown changed.
  function mergeRounds(d, since) {
    state.runNumber = d.run ? d.run.number : null;
    state.attempts = d.run && d.run.attempts ? d.run.attempts : [];
    if (since === null) {
      state.rounds = d.rounds;
      return true;
    }
    const kept = state.rounds.filter((r) => r.round <= since);
    const replaced = state.rounds.filter((r) => r.round > since);
    // In the API's order, by attempt and then round: an attempt that restarted at round 1 has
    // rounds on both sides of `since`, so the answer does not simply go after what we keep.
    state.rounds = kept.concat(d.rounds).sort((a, b) => (a.attempt || 1) - (b.attempt || 1) || a.round - b.round);
    return JSON.stringify(replaced) !== JSON.stringify(d.rounds);
  }

  // A partial answer that cannot be merged: another run (a new one started), or fewer rounds than we hold.
  function needsReload(d) {
    if (!d.run || d.run.number !== state.runNumber) return true;
    // A new attempt that counts from round 1 again has rounds numbered below `since`.
    if ((d.run.attempts || []).length !== state.attempts.length) return true;
    const held = state.rounds.length ? state.rounds[state.rounds.length - 1].round : 0;
    return d.run.current_round < held;
  }

  async function poll() {
    const note = $("live-note");
    let delay = FAST;
    try {
      let since = state.rounds !== null && state.runNumber !== null ? sinceFor(state.rounds) : null;
      let d = await fetchDashboard(since);
      if (since !== null && needsReload(d)) {
        since = null;
        d = await fetchDashboard(null);
      }
      const changed = mergeRounds(d, since);
      // Runs still growing are re-fetched for the overlay too.
      const comparing = state.compared.some((r) => ACTIVE.has(r.status));
      if (comparing) await refreshCompared();
      render(d, changed || comparing);
      if (!d.run || !ACTIVE.has(d.run.status)) delay = SLOW;
      note.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
      note.className = "muted";
    } catch (err) {
      note.textContent = `Cannot reach the server (${err.message}); retrying…`;
      note.className = "error";
      delay = SLOW;
    }
    setTimeout(poll, delay);
  }

  // The page carries no rounds: fetch them at once rather than after the first interval.
  poll();
})();
