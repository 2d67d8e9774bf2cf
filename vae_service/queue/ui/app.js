// The queue's web page: the jobs table (#/) and one job (#/jobs/<id>), refreshed every 2 s from
// the JSON API. The token lives in this tab's sessionStorage only and travels as a bearer header.
// Every value from the API reaches the page as text (textContent, createElement): job names,
// specs and logs are user input.
"use strict";
(() => {
  const KEY = "vae-api-token";
  const REFRESH_MS = 2000;
  const LOG_LINES = 200;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g; // terminal colours in Ray's log lines
  const API = location.pathname.replace(/\/ui\/?$/, ""); // the API's root, also behind a path prefix
  const $ = (id) => document.getElementById(id);
  let generation = 0; // bumped on every route change: a stale refresh loop sees it and stops
  let timer = null;

  class Refused extends Error {}

  // ---- API calls

  async function call(path, options = {}) {
    const response = await fetch(API + path, {
      ...options, cache: "no-store", headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) },
    });
    if (response.status === 401) throw new Refused("token refused");
    if (!response.ok) throw new Error(await problem(response));
    return response;
  }

  async function problem(response) {
    // FastAPI's {"detail": "..."} or {"detail": [{msg: ...}, ...]}; anything else as text
    let text = await response.text();
    try {
      const detail = JSON.parse(text).detail;
      text = typeof detail === "string" ? detail
        : Array.isArray(detail) ? detail.map((p) => (p.path ? p.path + ": " : "") + (p.msg || JSON.stringify(p))).join("; ")
        : JSON.stringify(detail);
    } catch (_) { /* not JSON: the text itself */ }
    return `${response.status} ${text || response.statusText}`;
  }

  // ---- small helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    node.append(...children); // strings become text nodes
    return node;
  }

  function badge(state) {
    return el("span", { class: "badge", "data-field": "state", "data-state": state }, state);
  }

  function age(iso) {
    let s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (!Number.isFinite(s)) return "";
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    s %= 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  }

  function resources(request) {
    const names = Object.keys(request || {}).sort((a, b) => order(a) - order(b) || a.localeCompare(b));
    return names.map((name) => `${request[name]} ${name}`).join(", ");
  }
  const order = (name) => ({ CPU: 0, GPU: 1 }[name] ?? 2);

  function when(iso) {
    return iso ? `${new Date(iso).toLocaleString()} (${age(iso)} ago)` : "—";
  }

  function link(url, id) {
    // only http(s): a link never runs script, whatever the server's settings say
    if (!url || !/^https?:\/\//i.test(url)) return el("span", { id, "data-field": id }, "—");
    return el("a", { id, "data-field": id, href: url, target: "_blank", rel: "noopener noreferrer" }, url);
  }

  function say(text) {
    $("message").textContent = text;
    $("message").hidden = !text;
  }

  // ---- routing and refreshing

  function show(section) {
    for (const id of ["login", "jobs", "job"]) $(id).hidden = id !== section;
    $("logout").hidden = section === "login";
  }

  function stop() {
    generation += 1;
    clearTimeout(timer);
  }

  function route() {
    stop();
    if (!sessionStorage.getItem(KEY)) {
      show("login");
      document.title = "VAE job queue";
      $("token").focus();
      return;
    }
    const id = jobInHash();
    if (id) {
      show("job");
      refreshEvery(jobPage(id));
    } else {
      show("jobs");
      document.title = "Jobs · VAE job queue";
      refreshEvery(jobsTable);
    }
  }

  function jobInHash() {
    const match = location.hash.match(/^#\/jobs\/([^/?#]+)$/);
    try {
      return match && decodeURIComponent(match[1]);
    } catch (_) {
      return null; // a mangled address: the table instead
    }
  }

  function refreshEvery(update) {
    // update() returns false when there is nothing left to refresh (a finished job)
    const mine = generation;
    const tick = async () => {
      let again = true;
      if (!document.hidden) {
        try {
          again = await update(() => mine === generation);
          if (mine === generation) say("");
        } catch (error) {
          if (mine !== generation) return;
          if (error instanceof Refused) return refused();
          say(error instanceof TypeError ? `cannot reach the server: ${error.message}` : error.message);
        }
      }
      if (mine === generation && again !== false) timer = setTimeout(tick, REFRESH_MS);
    };
    tick();
  }

  function refused() {
    sessionStorage.removeItem(KEY);
    route();
    say("token refused");
  }

  // ---- the jobs table

  async function jobsTable(current) {
    const { jobs, total } = await (await call("/jobs?limit=100")).json();
    if (!current()) return false;
    $("jobs-body").replaceChildren(...jobs.map(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-total").textContent = total > jobs.length ? `(newest ${jobs.length} of ${total})` : `(${total})`;
    await sharesTable(current);
  }

  // ---- each user's fair share (yours; an admin: everyone's), the next in line first

  async function sharesTable(current) {
    const { half_life_s: halfLife, users } = await (await call("/fair-share")).json();
    if (!current()) return false;
    const percent = (field, value) => el("td", { "data-field": field, class: "num" }, (100 * value).toFixed(1) + " %");
    $("shares-body").replaceChildren(...users.map((user) => el("tr", { "data-user": user.user },
      el("td", { "data-field": "user" }, user.user), el("td", { "data-field": "weight", class: "num" }, String(user.weight)),
      percent("current_share", user.current_share), percent("historic_share", user.historic_share),
      percent("effective_share", user.effective_share))));
    $("shares-note").textContent = (halfLife ? `(half-life ${+(halfLife / 86400).toFixed(2)} d` : "(no history")
      + "; effective = (current + historic) / weight, smallest goes next)";
  }

  function jobRow(job) {
    const cell = (field, ...content) => el("td", { "data-field": field }, ...content);
    const state = cell("state-cell", badge(job.state));
    if (job.waiting_reason) {  // the API gives one only to a queued job, or a running one Ray has not placed
      state.append(el("small", { class: "reason", "data-field": "waiting_reason" }, job.waiting_reason));
    }
    const number = (field, value) => el("td", { "data-field": field, class: "num" }, String(value ?? 0));
    return el("tr", { "data-job-id": job.id, "data-state": job.state },
      cell("id", el("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, job.id)),
      cell("name", job.name), cell("kind", job.kind), state, number("priority", job.priority),
      cell("user", job.submitted_by), cell("resources", resources(job.resources)),
      el("td", { "data-field": "age", title: job.created_at }, age(job.created_at)),
      number("attempts", job.attempts), number("preemptions", job.preemptions));
  }

  // ---- one job

  function jobPage(id) {
    const path = "/jobs/" + encodeURIComponent(id);
    $("job-title").textContent = id;
    $("job-state-badge").replaceChildren();
    $("job-fields").replaceChildren();
    $("job-spec").textContent = "";
    $("job-log").textContent = "";
    $("log-status").textContent = "";
    $("cancel-error").textContent = "";
    $("cancel").hidden = true;
    $("cancel").dataset.jobId = id;
    return async (current) => {
      const job = await (await call(path)).json();
      if (!current()) return false;
      showJob(job);
      await showLog(path, current); // once more after the job ends: its last lines
      return !TERMINAL.has(job.state);
    };
  }

  function showJob(job) {
    document.title = `${job.name} · VAE job queue`;
    $("job-title").textContent = `${job.name} (${job.id})`;
    $("job-state-badge").replaceChildren(badge(job.state));
    $("cancel").hidden = TERMINAL.has(job.state);
    const links = job.links || {};
    const rows = [
      ["id", el("span", { class: "mono" }, job.id)], ["name", job.name], ["kind", job.kind], ["state", badge(job.state)],
      ["waiting_reason", job.waiting_reason], ["position", job.position], ["priority", job.priority],
      ["user", job.submitted_by], ["resources", resources(job.resources)], ["attempts", job.attempts ?? 0],
      ["preemptions", job.preemptions ?? 0], ["created", when(job.created_at)], ["submitted", when(job.submitted_at)],
      ["started", when(job.started_at)], ["finished", when(job.finished_at)], ["error", job.error],
      ["overrides", overrides(job.overrides)], ["nodes", (job.nodes || []).join(", ")],
      ["MLflow run", link(links.mlflow, "link-mlflow")], ["Ray job", link(links.ray, "link-ray")],
    ];
    $("job-fields").replaceChildren(...rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value]) => [el("dt", {}, name),
        el("dd", { "data-field": name.replace(" ", "-") }, value instanceof Node ? value : String(value))]));
    if ($("job-spec").textContent !== (job.spec || "")) $("job-spec").textContent = job.spec || "";
  }

  function overrides(list) {
    // as they would be typed: --set a.b=c ...
    return list && list.length ? el("span", { class: "mono" }, list.map((o) => "--set " + o).join("  ")) : null;
  }

  async function showLog(path, current) {
    let text;
    try {
      text = await (await call(`${path}/logs?tail=${LOG_LINES}`)).text();
    } catch (error) {
      if (error instanceof Refused) throw error;
      if (current()) $("log-status").textContent = `(${error.message})`; // Ray busy or gone: the job page stays
      return;
    }
    if (!current()) return;
    const log = $("job-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const shown = text.replace(ANSI, "") || "(no output yet)";
    if (log.textContent !== shown) log.textContent = shown;
    if (atBottom) log.scrollTop = log.scrollHeight; // follow the tail unless the user scrolled up
    $("log-status").textContent = `(last ${LOG_LINES} lines)`;
  }

  async function cancel() {
    const id = $("cancel").dataset.jobId;
    if (!confirm(`Cancel job ${id}?`)) return;
    $("cancel-error").textContent = "";
    try {
      await call(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    } catch (error) {
      if (error instanceof Refused) return refused();
      $("cancel-error").textContent = `Not cancelled: ${error.message}`;
      return;
    }
    route(); // show its new state now rather than at the next refresh
  }

  // ---- events

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!/^[\x21-\x7e]+$/.test(token)) return say("token refused: a token is printable ASCII without spaces");
    sessionStorage.setItem(KEY, token);
    say("");
    route();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    say("");
    route();
  });
  $("cancel").addEventListener("click", cancel);
  window.addEventListener("hashchange", route);
  route();
})();
