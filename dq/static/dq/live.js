/* dq's admin pages, refreshed live: every element marked data-dq-live="NAME" is replaced,
 * every few seconds, by the element of that name in the same page fetched again (same URL:
 * filters, search and page kept). Off with the checkbox, and never while the tab is hidden,
 * rows are selected, an action is chosen, a filter is open or a field has the focus: what a
 * person is doing is never replaced under them. The choice is kept in localStorage. */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
    const control = document.getElementById("dq-live");
    const parts = () => document.querySelectorAll("[data-dq-live]");
    if (control && parts().length) {
        const on = document.getElementById("dq-live-on");
        const every = document.getElementById("dq-live-every");
        const status = document.getElementById("dq-live-status");
        const KEY = "dq.admin.live";
        const saved = JSON.parse(localStorage.getItem(KEY) || "{}");
        if (saved.on === false) on.checked = false;
        if (saved.every && every.querySelector(`option[value="${CSS.escape(saved.every)}"]`)) {
            every.value = saved.every;
        }
        control.hidden = false;

        let timer = null;
        let actionsStale = false;  // the list was replaced: Django's actions.js must bind it

        const busy = () =>
            document.querySelector("input.action-select:checked, #action-toggle:checked") ||
            document.querySelector("#changelist-form select[name=action]")?.value ||
            document.querySelector("details.dq-filter[open]") ||
            (document.activeElement?.matches("input[type=text], input[type=search], textarea") &&
                !control.contains(document.activeElement));

        function say(text) {
            status.textContent = text;
        }

        function schedule(delay) {
            clearTimeout(timer);
            timer = null;
            if (on.checked && !document.hidden) {
                timer = setTimeout(refresh, delay ?? every.value * 1000);
            }
        }

        async function refresh() {
            if (busy()) {
                say("paused while you work on the page");
                schedule();
                return;
            }
            try {
                const response = await fetch(window.location.href, {
                    credentials: "same-origin",
                    headers: {"X-DQ-Live": "1"},
                });
                if (!response.ok) throw new Error(`the server answered ${response.status}`);
                const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
                if (!busy()) {
                    for (const part of parts()) {
                        const name = CSS.escape(part.dataset.dqLive);
                        const replacement = fresh.querySelector(`[data-dq-live="${name}"]`);
                        if (replacement) part.replaceWith(document.adoptNode(replacement));
                    }
                    actionsStale = true;
                    say(`updated ${new Date().toLocaleTimeString()}`);
                    document.dispatchEvent(new CustomEvent("dq:refreshed"));
                }
            } catch (error) {
                say(`not updated: ${error.message}`);
            }
            schedule();
        }

        // Django binds its action checkboxes once, on load: bind the new ones when used.
        function bindActions() {
            if (actionsStale && window.Actions) {
                const boxes = document.querySelectorAll("tr input.action-select");
                if (boxes.length) window.Actions(boxes);
                actionsStale = false;
            }
        }
        document.addEventListener("pointerdown", bindActions, true);
        document.addEventListener("focusin", bindActions, true);

        function changed() {
            localStorage.setItem(KEY, JSON.stringify({on: on.checked, every: every.value}));
            say(on.checked ? "" : "off");
            schedule();
        }
        on.addEventListener("change", changed);
        every.addEventListener("change", changed);
        document.addEventListener("visibilitychange", () =>
            document.hidden ? schedule() : schedule(0));
        say(on.checked ? "" : "off");
        schedule();
    }
});
