// The page: choose, drop or paste a photo; show its top 5 classes (:classify)
// and its Grad-CAM heatmap (:explain) over it, with an opacity slider.
// Plain JavaScript, no dependencies: it runs under the server's
// Content-Security-Policy (scripts and styles from this server only).
"use strict";

(function () {
  const model = document.body.dataset.model;
  const base = "v1/models/" + encodeURIComponent(model);
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), fileInput = $("file"), errorLine = $("error"), status = $("status");
  const result = $("result"), photo = $("photo"), overlay = $("overlay");
  const opacity = $("opacity"), classes = $("classes"), explained = $("explained");
  const keyRow = $("key-row"), keyInput = $("key");
  let current = 0;      // The newest photo's number: older answers are dropped.
  let urls = [];        // Object URLs of the photo shown, freed on the next one.

  $("model-name").textContent = model;

  function headers() {
    const key = keyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = false;
  }

  // The server's one-line error, or a line of our own if the answer holds none.
  async function failure(response) {
    let text = "";
    try {
      const body = await response.json();
      text = body && typeof body.error === "string" ? body.error : "";
    } catch (err) { /* not JSON */ }
    if (response.status === 401) keyRow.hidden = false;
    return text || ("the server answered " + response.status + " " + response.statusText);
  }

  async function post(verb, file) {
    const form = new FormData();
    form.append("image", file, file.name || "pasted");
    return fetch(base + verb, { method: "POST", body: form, headers: headers() });
  }

  function showClasses(predictions) {
    classes.replaceChildren();
    for (const p of predictions) {
      const item = document.createElement("li");
      const line = document.createElement("div");
      const name = document.createElement("span");
      const score = document.createElement("span");
      const bar = document.createElement("div");
      const fill = document.createElement("span");
      line.className = "line";
      name.className = "name";
      score.className = "score";
      bar.className = "bar";
      name.textContent = p.class_name;
      score.textContent = (100 * p.score).toFixed(2) + "%";
      fill.style.width = Math.max(0, Math.min(100, 100 * p.score)).toFixed(2) + "%";
      item.dataset.classIndex = p.class_index;
      item.dataset.className = p.class_name;
      item.dataset.score = p.score;
      line.append(name, score);
      bar.append(fill);
      item.append(line, bar);
      classes.append(item);
    }
  }

  async function show(file) {
    const mine = ++current;
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [URL.createObjectURL(file)];
    errorLine.hidden = true;
    result.hidden = true;
    classes.replaceChildren();
    overlay.removeAttribute("src");
    explained.textContent = "";
    status.textContent = "classifying " + (file.name || "the pasted photo") + "...";
    try {
      const answer = await post(":classify?top=5", file);
      if (mine !== current) return;
      if (!answer.ok) {
        status.textContent = "";
        showError(await failure(answer));
        return;
      }
      photo.src = urls[0];
      showClasses((await answer.json()).predictions);
      result.hidden = false;
      status.textContent = "explaining...";
      // The heatmap alone (alpha=1), laid over the photo at the slider's opacity.
      const cam = await post(":explain?alpha=1", file);
      if (mine !== current) return;
      if (!cam.ok) {
        status.textContent = "";
        showError(await failure(cam));
        return;
      }
      const name = decodeURIComponent(cam.headers.get("X-Class-Name") || "");
      const url = URL.createObjectURL(await cam.blob());
      if (mine !== current) { URL.revokeObjectURL(url); return; }
      urls.push(url);
      overlay.src = url;
      explained.textContent = name ? "where it saw " + name : "";
      status.textContent = "";
    } catch (err) {
      if (mine !== current) return;
      status.textContent = "";
      showError("the request failed: " + err.message);
    }
  }

  function first(files) {
    return files && files.length ? files[0] : null;
  }

  fileInput.addEventListener("change", () => {
    const file = first(fileInput.files);
    if (file) show(file);
    fileInput.value = "";  // Choosing the same file again shows it again.
  });
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (event.target === drop || !drop.contains(event.relatedTarget)) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = first(event.dataTransfer && event.dataTransfer.files);
    if (file) show(file);
  });
  document.addEventListener("paste", (event) => {
    const file = first(event.clipboardData && event.clipboardData.files);
    if (file) {
      event.preventDefault();
      show(file);
    }
  });
  opacity.addEventListener("input", () => {
    overlay.style.opacity = opacity.value;
  });
  overlay.style.opacity = opacity.value;
})();
