// Times are shown in the browser's time zone: the server learns it from this cookie, set on the
// sign-in page already, so every page after it is drawn in local time.
(() => {
  // Zone names are letters, digits, "/", "_", "+" and "-": safe in a cookie as they are.
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  if (!document.cookie.split("; ").includes(`tz=${zone}`)) {
    document.cookie = `tz=${zone}; path=/; max-age=31536000; samesite=lax`;
  }
})();

// Copy and reveal buttons: the only behaviour HTMX attributes cannot express.
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.querySelector(copy.dataset.copy);
    const text = source.value !== undefined ? source.value : source.textContent;
    const done = () => { const label = copy.textContent; copy.textContent = "Copied"; setTimeout(() => { copy.textContent = label; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text.trim()).then(done);
    } else {
      const area = document.createElement("textarea");
      area.value = text.trim(); document.body.appendChild(area); area.select();
      document.execCommand("copy"); area.remove(); done();
    }
  }
  const reveal = event.target.closest("[data-reveal]");
  if (reveal) {
    const input = document.querySelector(reveal.dataset.reveal);
    const hidden = input.type === "password";
    input.type = hidden ? "text" : "password";
    reveal.textContent = hidden ? "Hide" : "Reveal";
  }
});

// A form that undoes something (revoking a key) asks first.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

// A category (or "All events") checkbox covers its types: show them as included.
function syncEvents(form) {
  const all = form.querySelector('input[name="events"][value="*"]');
  form.querySelectorAll(".category").forEach((category) => {
    const head = category.querySelector('input[value$=".*"]');
    const covered = (all && all.checked) || head.checked;
    if (all && head !== all) head.disabled = all.checked;
    category.querySelectorAll("ul input").forEach((box) => {
      box.disabled = covered;
      if (covered) box.checked = true;
    });
  });
}
document.addEventListener("change", (event) => {
  if (event.target.name === "events") syncEvents(event.target.form);
});
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("fieldset.events").forEach((set) => syncEvents(set.form));
});

// A form answered with problems: its summary of them takes the focus (on a new page, or once
// htmx swaps it in), so that a screen reader reads it first; each of its links moves the focus
// to the field it names, and scrolls that field's label into view.
function focusSummary(root) {
  const summary = root.querySelector("[data-focus-on-load]");
  if (summary) summary.focus();
}
document.addEventListener("DOMContentLoaded", () => focusSummary(document));
document.addEventListener("htmx:afterSettle", (event) => focusSummary(event.target));
document.addEventListener("click", (event) => {
  const link = event.target.closest(".error-summary a[href^='#']");
  if (!link) return;
  const field = document.getElementById(link.getAttribute("href").slice(1));
  if (!field) return;
  event.preventDefault();
  // A checkbox of a group shows its group's legend; any other field, its label.
  const legend = field.type === "checkbox" ? field.closest("fieldset")?.querySelector("legend") : null;
  const label = legend || (field.labels && field.labels[0]) || field;
  label.scrollIntoView();
  field.focus({ preventScroll: true });
});
