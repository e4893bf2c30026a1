// Baton console: the workflow page's live DAG and step details, and confirmations.
// Plain JavaScript, no build step. Reads the JSON API with the session cookie.
"use strict";

function text(tag, content, cls) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (content !== undefined && content !== null) el.textContent = String(content);
  return el;
}

function when(ms) {
  // As the server writes times: UTC, to the second.
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "") : "—";
}

// Every form that changes something asks first, in words that say what it will do.
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});

const dag = document.querySelector("svg[data-workflow]");
if (dag) {
  const id = dag.dataset.workflow;
  const panel = document.getElementById("step-panel");
  const badge = document.getElementById("workflow-state");
  const live = document.getElementById("live");
  let shown = null;

  const stepNode = (name) =>
    Array.from(dag.querySelectorAll("g.step")).find((g) => g.dataset.step === name);

  async function showStep(name) {
    shown = name;
    dag.querySelectorAll("g.step.selected").forEach((g) => g.classList.remove("selected"));
    const node = stepNode(name);
    if (node) node.classList.add("selected");
    const response = await fetch(`/api/v1/workflows/${id}?attempts_of=${encodeURIComponent(name)}`,
      { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json();
    panel.replaceChildren();
    if (!response.ok) {
      panel.append(text("p", body.error ? body.error.message : response.statusText, "notice error"));
      return;
    }
    const step = (body.steps || []).find((s) => s.name === name);
    if (!step) { panel.append(text("p", "No such step.", "muted")); return; }
    panel.append(text("h3", step.name));
    const facts = document.createElement("div");
    facts.className = "facts";
    const fact = (label, value) => {
      const d = document.createElement("div");
      d.append(text("span", label), text("strong", value));
      facts.append(d);
    };
    fact("State", step.state);
    fact("Attempts", step.attempts);
    fact("Agent", step.agent || "—");
    fact("Started", when(step.started_at_ms));
    fact("Finished", when(step.finished_at_ms));
    fact("Exit code", step.exit_code);
    if (step.pending_reason) fact("Waiting for", step.pending_reason);
    panel.append(facts);
    if (step.output) { panel.append(text("h4", "Output (tail)")); panel.append(text("pre", step.output)); }
    if (step.error) { panel.append(text("h4", "Error (tail)")); panel.append(text("pre", step.error)); }
    const earlier = step.earlier_attempts || [];
    if (earlier.length) {
      panel.append(text("h4", `Earlier attempts (${earlier.length})`));
      const list = document.createElement("ul");
      earlier.forEach((a) => {
        const item = text("li", `attempt ${a.attempt_id} on ${a.agent || "?"}: ${a.outcome}, ` +
          `exit ${a.exit_code}, ${when(a.started_at_ms)} to ${when(a.finished_at_ms)}`);
        if (a.error) item.append(text("pre", a.error));
        list.append(item);
      });
      panel.append(list);
    }
  }

  dag.querySelectorAll("g.step").forEach((g) => {
    g.addEventListener("click", () => showStep(g.dataset.step));
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); showStep(g.dataset.step); }
    });
  });

  if (dag.dataset.finished !== "true") {
    // From the first index the page does not show: nothing already drawn is replayed.
    const source = new EventSource(
      `/api/v1/workflows/${id}/events?from_index=${dag.dataset.fromIndex}`);
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
    source.addEventListener("workflow_event", (message) => {
      const event = JSON.parse(message.data);
      if (event.step && event.step_state && event.step_state !== "unspecified") {
        const node = stepNode(event.step);
        if (node) {
          node.dataset.state = event.step_state;
          const label = node.querySelector("text.state");
          if (label) label.textContent = event.step_state;
          if (shown === event.step) showStep(event.step);
        }
      }
      const paused = document.getElementById("fact-paused");
      if (event.kind === "workflow_paused" && paused) paused.hidden = false;
      if (event.kind === "workflow_resumed" && paused) paused.hidden = true;
      if (event.kind === "workflow_finished") {
        const finished = document.getElementById("fact-finished");
        if (finished) finished.textContent = when(event.time_ms);
      }
      if (event.kind === "workflow_finished" && badge) {
        badge.textContent = event.workflow_state;
        badge.className = `badge ${event.workflow_state}`;
        document.querySelectorAll("[data-while-running]").forEach((el) => el.remove());
        source.close();
        live.textContent = "finished";
        live.className = "live";
      }
    });
  }
}
