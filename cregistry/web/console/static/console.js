// The Client Registry page's moving parts: the countdown, the pending list
// refreshing itself, and the Grant access dialog. Everything a device sent
// is put into the page as text (textContent), never as markup.
"use strict";

(function () {
  const panel = document.getElementById("registry");
  if (!panel) {
    return;
  }
  const REFRESH_MS = 2000;
  const refreshUrl = panel.dataset.refreshUrl;
  const requestsUrl = panel.dataset.requestsUrl;
  const signInUrl = panel.dataset.signInUrl;
  const word = document.getElementById("lock-word");
  const left = document.getElementById("lock-left");
  const hintLocked = document.getElementById("lock-hint-locked");
  const hintUnlocked = document.getElementById("lock-hint-unlocked");
  const rows = document.getElementById("request-rows");
  const count = document.getElementById("request-count");
  const overflow = document.getElementById("request-overflow");
  const problem = document.getElementById("refresh-problem");
  const dialog = document.getElementById("grant-dialog");

  let deadline = Date.now() + Number(panel.dataset.secondsLeft || 0) * 1000;
  let requests = new Map();
  let shownId = null;
  let lastRendered = null;

  // -- text as the server shows it (see the `visible` and `when` filters) --
  const INVISIBLE = /(?! )[\p{C}\p{Z}]/gu;
  const NAMED = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };

  function visible(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return text.replace(INVISIBLE, (c) => {
      if (NAMED[c]) {
        return NAMED[c];
      }
      const code = c.codePointAt(0);
      if (code < 0x100) {
        return "\\x" + code.toString(16).padStart(2, "0");
      }
      if (code < 0x10000) {
        return "\\u" + code.toString(16).padStart(4, "0");
      }
      return "\\U" + code.toString(16).padStart(8, "0");
    });
  }

  function visibleLines(text) {
    return text.split("\n").map(visible).join("\n");
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").replace("Z", " UTC") : "";
  }

  // The `certificate_request` filter's words.
  function certificateRequest(requested) {
    if (!requested) {
      return "Not requested";
    }
    return "Requested: " + requested.keyType + " key, public key SHA-256 " + requested.publicKeySha256;
  }

  function clockText(seconds) {
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const rest = String(seconds % 60).padStart(2, "0");
    return hours ? hours + ":" + String(minutes).padStart(2, "0") + ":" + rest : minutes + ":" + rest;
  }

  // -- the lock state and its countdown ---------------------------------------
  function tick() {
    const seconds = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    const unlocked = seconds > 0;
    panel.classList.toggle("is-unlocked", unlocked);
    panel.classList.toggle("is-locked", !unlocked);
    word.textContent = unlocked ? "Unlocked" : "Locked";
    left.hidden = !unlocked;
    left.textContent = unlocked ? clockText(seconds) + " left" : "";
    hintLocked.hidden = unlocked;
    hintUnlocked.hidden = !unlocked;
  }

  // -- the pending list ---------------------------------------------------------
  function cell(label, text, className) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    return td;
  }

  function reviewLink(req, text, className) {
    const link = document.createElement("a");
    link.href = requestsUrl + encodeURIComponent(req.id);
    link.className = className;
    link.textContent = text;
    return link;
  }

  function render(list) {
    const fragment = document.createDocumentFragment();
    if (list.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = 8;
      td.textContent = "No pending requests. Unlock the registry, then start the device.";
      tr.append(td);
      fragment.append(tr);
    }
    for (const req of list) {
      const tr = document.createElement("tr");
      tr.dataset.requestId = req.id;
      const name = cell("Username", "");
      name.append(reviewLink(req, req.username, "review"));
      if (req.certificateRequest) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.title = certificateRequest(req.certificateRequest);
        tag.textContent = "Certificate requested";
        name.append(" ", tag);
      }
      const action = document.createElement("td");
      action.append(reviewLink(req, "Review", "button review"));
      const pairing = cell("Pairing ID", req.pairingId, "mono strong");
      if (req.contested) {
        const badge = document.createElement("span");
        badge.className = "badge contested";
        badge.textContent = "Contested";
        pairing.append(" ", badge);
      }
      tr.append(
        name,
        pairing,
        cell("Client ID", visible(req.clientId), "mono"),
        cell("Source", visible(req.source)),
        cell("First seen", when(req.firstSeen)),
        cell("Last seen", when(req.lastSeen)),
        cell("Attempts", String(req.attempts), "number"),
        action,
      );
      fragment.append(tr);
    }
    rows.replaceChildren(fragment);
  }

  async function refresh() {
    let data;
    try {
      const response = await fetch(refreshUrl, {
        headers: { Accept: "application/json" },
        cache: "no-store",
        credentials: "same-origin",
      });
      if (response.status === 401) {
        window.location.assign(signInUrl);
        return;
      }
      if (!response.ok) {
        throw new Error("status " + response.status);
      }
      data = await response.json();
    } catch (error) {
      problem.hidden = false;
      return;
    }
    problem.hidden = true;
    deadline = Date.now() + data.secondsLeft * 1000;
    tick();
    count.textContent = String(data.total);
    overflow.hidden = data.total <= data.requests.length;
    requests = new Map(data.requests.map((req) => [req.id, req]));
    const text = JSON.stringify(data.requests);
    if (text !== lastRendered) {
      lastRendered = text;
      render(data.requests);
    }
    if (dialog.open && shownId !== null) {
      const req = requests.get(shownId);
      if (req) {
        fill(req);
      }
      markGone(!req);
    }
  }

  // -- the Grant access dialog ----------------------------------------------------
  function fill(req) {
    for (const element of dialog.querySelectorAll("[data-field]")) {
      const field = element.dataset.field;
      let text;
      if (field === "firstSeen" || field === "lastSeen") {
        text = when(req[field]);
      } else if (field === "certificateRequest") {
        text = certificateRequest(req.certificateRequest);
      } else if (field === "context") {
        text = req.context ? visibleLines(JSON.stringify(req.context, null, 2)) : "(none)";
      } else {
        text = visible(req[field]);
      }
      element.textContent = text;
    }
    dialog.querySelector("[data-contested]").hidden = !req.contested;
    dialog.querySelector("[data-refused]").hidden = !req.refusedAttempts;
  }

  function markGone(gone) {
    dialog.querySelector("[data-gone]").hidden = !gone;
    for (const button of dialog.querySelectorAll("form[data-action] button")) {
      button.disabled = gone;
    }
  }

  function openDialog(req) {
    shownId = req.id;
    fill(req);
    markGone(false);
    const base = requestsUrl + encodeURIComponent(req.id) + "/";
    for (const form of dialog.querySelectorAll("form[data-action]")) {
      form.action = base + form.dataset.action;
    }
    dialog.showModal();
  }

  rows.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-request-id]");
    const req = tr ? requests.get(tr.dataset.requestId) : undefined;
    if (!req || typeof dialog.showModal !== "function") {
      return; // not loaded yet, or no <dialog>: the link opens the request's page
    }
    event.preventDefault();
    openDialog(req);
  });

  dialog.addEventListener("close", () => {
    shownId = null;
  });

  tick();
  setInterval(tick, 500);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
