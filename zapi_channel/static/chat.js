/*
 * The Z-API emulator's chat page: type as a WhatsApp customer, see the bot's answers as WhatsApp
 * would show them.
 *
 * It only talks to the emulator's JSON API: POST /_emulator/messages makes the customer say
 * something (the emulator posts the ReceivedCallback to the bot), GET /_emulator/messages?phone=
 * is polled for the conversation, GET /_emulator/conversations fills the chat list.
 *
 * Everything the bot sent is untrusted: text goes through formatText (escape first, then add our
 * own tags), URLs through safeUrl, and every other value reaches the DOM as textContent.
 */
(() => {
  "use strict";

  const POLL_MS = 700;
  const CHATS_EVERY = 3; // refresh the chat list on every third poll (about 2 s)
  const DEFAULT_PHONE = "5511999990001";
  const PHONE = /^\d{8,15}$|^\d+@lid$/;
  const STORE = "zapi-emulator-chat.";

  // -- pure helpers (exported as window.ZapiChat for tests) ------------------------------------

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(value) {
    return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // WhatsApp's markers, in the order they are applied; each must touch a non-space on its inner
  // side and a non-letter (or the text's edge) on its outer side, so snake_case stays as it is.
  const MARKERS = [
    ["*", "strong"],
    ["_", "em"],
    ["~", "s"],
  ].map(([mark, tag]) => {
    // Unicode-mode patterns refuse needless escapes: only "*" needs one.
    const m = mark === "*" ? "\\*" : mark;
    const pattern =
      `(^|[^\\p{L}\\p{N}${m}])${m}(?![\\s${m}])([^\\n${m}]*?[^\\s${m}])${m}(?![\\p{L}\\p{N}${m}])`;
    return [new RegExp(pattern, "gmu"), tag];
  });
  const URL_IN_TEXT = /\bhttps?:\/\/[^\s<>"']+/g;
  const TRAILING = /[.,;:!?)\]}*_~]+$/;

  /** WhatsApp text as safe HTML: *bold*, _italic_, ~strike~, ```mono```, `code`, links. */
  function formatText(raw) {
    // Private-use characters mark the pieces already turned into HTML; none may come from outside.
    let text = String(raw ?? "").replace(/[\uE000\uE001]/g, "");
    const kept = [];
    const keep = (html) => `\uE000${kept.push(html) - 1}\uE001`;
    text = text.replace(/```([\s\S]+?)```/g, (_, code) => keep(`<code class="mono">${escapeHtml(code)}</code>`));
    text = text.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code class="inline">${escapeHtml(code)}</code>`));
    text = text.replace(URL_IN_TEXT, (match) => {
      const trail = (match.match(TRAILING) || [""])[0];
      const url = match.slice(0, match.length - trail.length);
      const safe = escapeHtml(url);
      return keep(`<a href="${safe}" target="_blank" rel="noopener noreferrer">${safe}</a>`) + trail;
    });
    text = escapeHtml(text);
    for (const [pattern, tag] of MARKERS) {
      text = text.replace(pattern, (_, before, inner) => `${before}<${tag}>${inner}</${tag}>`);
    }
    return text.replace(/\uE000(\d+)\uE001/g, (_, index) => kept[Number(index)]);
  }

  /**
   * The URL if it may go into src/href: http(s) always; data: only when `data` allows it ("image"
   * for data:image/..., "any" for a download link). Everything else (javascript:...) is null.
   */
  function safeUrl(value, data = null) {
    if (typeof value !== "string" || !value.trim()) return null;
    const text = value.trim();
    let url;
    try {
      url = new URL(text, window.location.href);
    } catch {
      return null;
    }
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
    if (url.protocol === "data:") {
      if (data === "any") return text;
      if (data && text.toLowerCase().startsWith(`data:${data}/`)) return text;
    }
    return null;
  }

  /** +55 11 99999-0001 for a Brazilian mobile, +<digits> otherwise. */
  function formatPhone(phone) {
    const digits = String(phone);
    const br = /^55(\d{2})(\d{4,5})(\d{4})$/.exec(digits);
    if (br) return `+55 ${br[1]} ${br[2]}-${br[3]}`;
    return /^\d+$/.test(digits) ? `+${digits}` : digits;
  }

  function baseEndpoint(endpoint) {
    return String(endpoint || "").replace(/^\/+/, "").split("/")[0];
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function dayLabel(ms) {
    const day = new Date(ms);
    const today = new Date();
    const yesterday = new Date();
    yesterday.setDate(today.getDate() - 1);
    if (day.toDateString() === today.toDateString()) return "Today";
    if (day.toDateString() === yesterday.toDateString()) return "Yesterday";
    return day.toLocaleDateString([], { day: "numeric", month: "long", year: "numeric" });
  }

  // -- DOM helpers --------------------------------------------------------------------------

  /**
   * An element. Attribute names are always ours; values are set with setAttribute (never parsed
   * as HTML) except "html", which only ever receives formatText's output.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "html") node.innerHTML = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";

  function icon(path, size = 16, className = "icon") {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", size);
    svg.setAttribute("height", size);
    svg.setAttribute("class", className);
    svg.setAttribute("aria-hidden", "true");
    const shape = document.createElementNS(SVG, "path");
    shape.setAttribute("fill", "currentColor");
    shape.setAttribute("d", path);
    svg.append(shape);
    return svg;
  }

  const ICONS = {
    ticks: "M17.6 6.3 16.2 4.9 9.8 11.3l1.4 1.4 6.4-6.4zm4.2-1.4L11.2 15.5 7 11.3l-1.4 1.4 5.6 5.6 12-12-1.4-1.4zM.4 12.7 6 18.3l1.4-1.4-5.6-5.6-1.4 1.4z",
    reply: "M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11z",
    list: "M3 13h2v-2H3v2zm0 4h2v-2H3v2zm0-8h2V7H3v2zm4 4h14v-2H7v2zm0 4h14v-2H7v2zM7 7v2h14V7H7z",
    link: "M14 3v2h3.59l-9.83 9.83 1.41 1.41L19 6.41V10h2V3h-7zM19 19H5V5h7V3H5a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2v-7h-2v7z",
    call: "M6.6 10.8a15.1 15.1 0 0 0 6.6 6.6l2.2-2.2a1 1 0 0 1 1-.25 11.4 11.4 0 0 0 3.6.57 1 1 0 0 1 1 1V20a1 1 0 0 1-1 1A17 17 0 0 1 3 4a1 1 0 0 1 1-1h3.5a1 1 0 0 1 1 1c0 1.25.2 2.45.57 3.57a1 1 0 0 1-.25 1z",
    pin: "M12 2a7 7 0 0 0-7 7c0 5.25 7 13 7 13s7-7.75 7-13a7 7 0 0 0-7-7zm0 9.5A2.5 2.5 0 1 1 12 6.5a2.5 2.5 0 0 1 0 5z",
    download: "M19 9h-4V3H9v6H5l7 7 7-7zM5 18v2h14v-2H5z",
    person: "M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zm0 2c-2.67 0-8 1.34-8 4v2h16v-2c0-2.66-5.33-4-8-4z",
  };

  // -- state --------------------------------------------------------------------------------

  function stored(key, fallback) {
    try {
      return window.localStorage.getItem(STORE + key) || fallback;
    } catch {
      return fallback;
    }
  }

  function store(key, value) {
    try {
      window.localStorage.setItem(STORE + key, value);
    } catch {
      // Storage can be disabled; the page works without remembering.
    }
  }

  const state = {
    phone: DEFAULT_PHONE,
    instanceId: null, // null: the emulator's first instance
    instances: [],
    payload: null, // the last GET /_emulator/messages answer, as text
    asOwner: false, // the composer writes as the shop, from its phone
    records: [],
    expanded: new Set(), // option lists opened, by message id
    started: new Set(), // chats started on this page that have no message yet
    conversations: [],
    stickToBottom: true, // scroll to the end on the next render, wherever the reader was
    atBottom: true, // the reader is at the end of the conversation
    polls: 0,
  };
  const signatures = new WeakMap();
  let $; // the page's elements, once the DOM is there

  // -- building the messages ----------------------------------------------------------------

  /** Options offered by bot messages, to quote the message a reply answers. */
  function offeredBy(records, index, key, value) {
    for (let i = index - 1; i >= 0; i -= 1) {
      const record = records[i];
      if (record.from !== "bot") continue;
      const body = record.body || {};
      const options = [
        ...((body.buttonList || {}).buttons || []),
        ...(body.buttonActions || []),
        ...((body.optionList || {}).options || []),
      ];
      if (options.some((option) => option && option[key] === value)) return record;
    }
    return null;
  }

  /** The list of things to draw: day separators and messages, each with a key and signature. */
  function buildItems(records) {
    const ids = new Set(records.map((r) => r.message_id).filter(Boolean));
    const byId = new Map(records.filter((r) => r.message_id).map((r) => [r.message_id, r]));
    const edits = new Map();
    const reactions = new Map();
    const folded = new Set();
    records.forEach((record, index) => {
      if (record.from !== "bot") return;
      const body = record.body || {};
      const endpoint = baseEndpoint(record.endpoint);
      if (endpoint === "send-text" && ids.has(body.editMessageId)) {
        edits.set(body.editMessageId, body.message);
        folded.add(index);
      } else if (endpoint === "send-reaction" && ids.has(body.messageId)) {
        reactions.set(body.messageId, body.reaction);
        folded.add(index);
      }
    });

    const items = [];
    let lastDay = null;
    let lastFrom = null;
    records.forEach((record, index) => {
      if (folded.has(index)) return;
      const day = new Date(record.momment || 0).toDateString();
      if (day !== lastDay) {
        items.push({
          key: `day-${day}`,
          sig: day,
          build: () => el("div", { class: "day" }, el("span", { text: dayLabel(record.momment) })),
        });
        lastDay = day;
        lastFrom = null;
      }
      const view = {
        record,
        first: record.from !== lastFrom,
        edit: edits.get(record.message_id),
        reaction: reactions.get(record.message_id),
        expanded: state.expanded.has(record.message_id),
        quote: null,
      };
      const content = record.content || {};
      if (content.buttonsResponseMessage) {
        view.quote = offeredBy(records, index, "id", content.buttonsResponseMessage.buttonId);
      } else if (content.listResponseMessage) {
        view.quote = offeredBy(records, index, "id", content.listResponseMessage.selectedRowId);
      } else if (record.from === "bot" && record.body && byId.has(record.body.messageId)) {
        // A bot answer that quotes the customer's message (quote_replies), as WhatsApp shows it.
        view.quote = byId.get(record.body.messageId);
      }
      lastFrom = record.from;
      items.push({
        key: record.message_id || `at-${index}`,
        sig: JSON.stringify([view.record, view.first, view.edit, view.reaction, view.expanded,
          view.quote && view.quote.message_id]),
        build: () => buildMessage(view),
      });
    });
    if (!items.length) {
      items.push({ key: "empty", sig: state.phone, build: buildEmpty });
    }
    return items;
  }

  function buildEmpty() {
    return el(
      "div",
      { class: "empty" },
      el(
        "span",
        {},
        "Messages typed here reach the bot as WhatsApp messages from ",
        el("strong", { text: formatPhone(state.phone) }),
        ". Its answers appear as a customer would see them.",
      ),
    );
  }

  function formatted(text, className = "text") {
    return el("div", { class: className, html: formatText(text) });
  }

  function meta(view) {
    const { record } = view;
    const parts = [];
    if (view.edit !== undefined) parts.push(el("span", { class: "edited", text: "Edited" }));
    parts.push(el("span", { class: "time", text: clock(record.momment) }));
    if (record.from === "customer") {
      const read = Boolean(record.read);
      const ticks = el(
        "span",
        {
          class: read ? "ticks read" : "ticks",
          title: read ? "Read by the bot (read-message)" : "Delivered to the bot's phone",
        },
        icon(ICONS.ticks, 16),
      );
      parts.push(ticks);
    } else if (record.status) {
      parts.push(
        el("span", {
          class: `status status-${String(record.status).toLowerCase()}`,
          title: `Z-API status of this message: ${record.status}`,
          text: String(record.status).toLowerCase(),
        }),
      );
    }
    return parts;
  }

  /** A bubble's timestamp: an invisible copy keeps room at the end of the text, as WhatsApp does. */
  function withMeta(bubble, view, overlay = false) {
    const shown = el("div", { class: overlay ? "meta overlay" : "meta" }, meta(view));
    const last = bubble.lastElementChild;
    if (overlay) bubble.classList.add("meta-over");
    else if (last && last.classList.contains("text")) {
      last.append(el("span", { class: "meta-room", "aria-hidden": "true" }, meta(view)));
    } else bubble.classList.add("meta-below");
    bubble.append(shown);
    return bubble;
  }

  function buildMessage(view) {
    const { record } = view;
    const mine = record.from === "customer";
    const owner = record.from === "owner";
    const side = mine ? "me" : owner ? "bot owner" : "bot";
    const row = el("div", { class: `row ${side}${view.first ? " first" : ""}` });
    const stack = el("div", { class: "stack" });
    // The shop's owner, writing from its phone, speaks on the business's side of the chat.
    const built = mine || owner ? customerBubble(view) : botBubble(view);
    if (owner) built.bubble.prepend(el("div", { class: "sender", text: "Shop (from the phone)" }));
    stack.append(built.bubble);
    if (view.reaction) {
      stack.append(el("div", { class: "reaction", title: "Reaction from the bot", text: view.reaction }));
      row.classList.add("has-reaction");
    }
    if (built.after) stack.append(built.after);
    row.append(stack);
    return row;
  }

  function quoteOf(record) {
    const body = (record && record.body) || {};
    const fromBot = record.from === "bot";
    const text = fromBot ? body.message || body.caption || "" : record.text || `(${record.kind || "message"})`;
    const name = fromBot ? "Bot" : record.sender_name || "Customer";
    return el(
      "div",
      { class: fromBot ? "quote" : "quote quote-customer" },
      el("div", { class: "quote-name", text: name }),
      el("div", { class: "quote-text", html: formatText(text.length > 160 ? `${text.slice(0, 160)}…` : text) }),
    );
  }

  function customerBubble(view) {
    const { record } = view;
    const content = record.content || {};
    const bubble = el("div", { class: `bubble kind-${record.kind || "text"}` });
    if (content.image) {
      const image = content.image;
      const src = safeUrl(image.imageUrl, "image");
      bubble.append(mediaImage(src, "Image sent by the customer"));
      if (image.caption) bubble.append(formatted(image.caption));
      return { bubble: withMeta(bubble, view, !image.caption) };
    }
    if (content.location) {
      bubble.append(locationCard(content.location, null, content.location.address));
      return { bubble: withMeta(bubble, view) };
    }
    if (content.audio) {
      bubble.append(audioPlayer(content.audio.audioUrl, content.audio.seconds));
      return { bubble: withMeta(bubble, view) };
    }
    if (view.quote) bubble.append(quoteOf(view.quote));
    bubble.append(formatted(record.text || ""));
    if (content.listResponseMessage) {
      const reply = content.listResponseMessage;
      if (reply.message && reply.message !== reply.title) {
        bubble.append(el("div", { class: "subtext", text: reply.message }));
      }
    }
    return { bubble: withMeta(bubble, view) };
  }

  function botBubble(view) {
    const { record } = view;
    const body = record.body || {};
    const endpoint = baseEndpoint(record.endpoint);
    const bubble = el("div", { class: `bubble kind-${endpoint}` });
    let after = null;
    if (view.quote) bubble.append(quoteOf(view.quote));
    switch (endpoint) {
      case "send-text":
        bubble.append(formatted(view.edit !== undefined ? view.edit : body.message));
        break;
      case "send-image": {
        bubble.append(mediaImage(safeUrl(body.image, "image"), body.caption || "Image from the bot"));
        if (body.caption) bubble.append(formatted(body.caption));
        return { bubble: withMeta(bubble, view, !body.caption) };
      }
      case "send-video": {
        const src = safeUrl(body.video, "video");
        bubble.append(src ? el("video", { class: "media", src, controls: true, preload: "metadata" })
          : brokenMedia("video"));
        if (body.caption) bubble.append(formatted(body.caption));
        return { bubble: withMeta(bubble, view, !body.caption) };
      }
      case "send-audio":
        // waveform: true is WhatsApp's voice note (drawn with its sound waves).
        bubble.append(audioPlayer(body.audio, null, body.waveform === true));
        break;
      case "send-sticker": {
        // A sticker has no bubble on WhatsApp: the picture alone, with the time over it.
        bubble.classList.add("sticker");
        const src = safeUrl(body.sticker, "image");
        bubble.append(src ? el("img", { class: "sticker-image", src, alt: "Sticker" }) : brokenMedia("image"));
        return { bubble: withMeta(bubble, view, true) };
      }
      case "send-document":
        bubble.append(documentCard(record.endpoint, body));
        if (body.caption) bubble.append(formatted(body.caption));
        break;
      case "send-link":
        bubble.append(linkCard(body));
        bubble.append(formatted(body.message));
        break;
      case "send-location":
        bubble.append(locationCard(body, body.title, body.address));
        break;
      case "send-button-list": {
        const list = body.buttonList || {};
        const image = safeUrl(list.image, "image");
        if (image) bubble.append(mediaImage(image, "Image of the message"));
        bubble.append(formatted(body.message));
        after = el("div", { class: "choices" }, (list.buttons || []).map((button) =>
          el(
            "button",
            {
              type: "button",
              class: "choice",
              title: `Answer with button ${button.id}`,
              onclick: () => sendChoice({ button_id: button.id, label: button.label }),
            },
            icon(ICONS.reply, 16),
            el("span", { text: button.label }),
          )));
        break;
      }
      case "send-button-actions":
        bubble.append(formatted(body.message));
        after = el("div", { class: "choices" }, (body.buttonActions || []).map(actionButton));
        break;
      case "send-option-list":
        bubble.append(formatted(body.message));
        after = optionList(record, body.optionList || {}, view.expanded);
        break;
      default: {
        // An endpoint this page does not draw: say what it was rather than hide it.
        bubble.classList.add("unknown");
        bubble.append(el("div", { class: "subtext", text: `${record.endpoint}` }));
        if (record.text) bubble.append(formatted(record.text));
      }
    }
    return { bubble: withMeta(bubble, view), after };
  }

  function mediaImage(src, alt) {
    if (!src) return brokenMedia("image");
    const image = el("img", { class: "media", src, alt, loading: "lazy" });
    // An image grows its bubble once loaded: keep the newest message in view if it was.
    image.addEventListener("load", () => {
      if (state.atBottom) scrollToBottom();
    });
    if (!src.startsWith("data:")) return el("a", { href: src, target: "_blank", rel: "noopener noreferrer" }, image);
    return image;
  }

  function brokenMedia(kind) {
    return el("div", { class: "broken", text: `(${kind} with an address this page will not load)` });
  }

  function audioPlayer(url, seconds, voice = false) {
    const src = safeUrl(url, "audio");
    const label = seconds ? `Voice message · ${seconds}s` : voice ? "Voice message" : "Audio";
    return el(
      "div",
      { class: "audio" },
      el("div", { class: "subtext", text: label }),
      src ? el("audio", { src, controls: true, preload: "none" }) : brokenMedia("audio"),
    );
  }

  function documentCard(endpoint, body) {
    const extension = String(endpoint).split("/")[1] || "file";
    let name = body.fileName || `document.${extension}`;
    if (!name.toLowerCase().endsWith(`.${extension.toLowerCase()}`)) name = `${name}.${extension}`;
    const href = safeUrl(body.document, "any");
    return el(
      href ? "a" : "div",
      {
        class: "document",
        href,
        download: href ? name : null,
        target: href && !href.startsWith("data:") ? "_blank" : null,
        rel: "noopener noreferrer",
        title: href ? `Download ${name}` : "The document's address is not a web address",
      },
      el("span", { class: `doc-icon doc-${extension.toLowerCase()}`, text: extension.slice(0, 4).toUpperCase() }),
      el(
        "span",
        { class: "doc-info" },
        el("span", { class: "doc-name", text: name }),
        el("span", { class: "doc-kind", text: `${extension.toUpperCase()} document` }),
      ),
      href ? icon(ICONS.download, 22, "icon doc-download") : null,
    );
  }

  function linkCard(body) {
    const href = safeUrl(body.linkUrl);
    const image = safeUrl(body.image, "image");
    let host = body.linkUrl || "";
    try {
      host = new URL(body.linkUrl).host;
    } catch {
      // Shown as given.
    }
    return el(
      href ? "a" : "div",
      { class: "link-card", href, target: "_blank", rel: "noopener noreferrer" },
      image ? el("img", { class: "link-image", src: image, alt: "" }) : null,
      el(
        "span",
        { class: "link-info" },
        body.title ? el("span", { class: "link-title", text: body.title }) : null,
        body.linkDescription ? el("span", { class: "link-description", text: body.linkDescription }) : null,
        el("span", { class: "link-host", text: host }),
      ),
    );
  }

  function locationCard(place, title, address) {
    const lat = Number(place.latitude);
    const lng = Number(place.longitude);
    const maps = `https://maps.google.com/maps?q=${encodeURIComponent(`${lat},${lng}`)}`;
    return el(
      "a",
      { class: "location", href: maps, target: "_blank", rel: "noopener noreferrer", title: "Open in a map" },
      el("span", { class: "map" }, icon(ICONS.pin, 34, "icon map-pin")),
      el(
        "span",
        { class: "place" },
        title ? el("span", { class: "place-title", text: title }) : null,
        address ? el("span", { class: "place-address", text: address }) : null,
        el("span", { class: "place-coords", text: `${lat.toFixed(5)}, ${lng.toFixed(5)}` }),
      ),
    );
  }

  function actionButton(action) {
    const label = el("span", { text: action.label });
    if (action.type === "URL") {
      const href = safeUrl(action.url);
      return el("a", { class: "choice", href, target: "_blank", rel: "noopener noreferrer", title: action.url }, icon(ICONS.link, 16), label);
    }
    if (action.type === "CALL") {
      const digits = String(action.phone || "").replace(/[^\d+]/g, "");
      return el("a", { class: "choice", href: `tel:${digits}`, title: `Call ${action.phone}` }, icon(ICONS.call, 16), label);
    }
    return el(
      "button",
      {
        type: "button",
        class: "choice",
        onclick: () => sendChoice({ button_id: action.id || action.label, label: action.label }),
      },
      icon(ICONS.reply, 16),
      label,
    );
  }

  function optionList(record, list, expanded) {
    const box = el("div", { class: "choices" });
    box.append(
      el(
        "button",
        {
          type: "button",
          class: "choice",
          "aria-expanded": expanded ? "true" : "false",
          onclick: () => {
            if (state.expanded.has(record.message_id)) state.expanded.delete(record.message_id);
            else state.expanded.add(record.message_id);
            render(state.records);
          },
        },
        icon(ICONS.list, 16),
        el("span", { text: list.buttonLabel || "Options" }),
      ),
    );
    if (expanded) {
      box.append(
        el(
          "div",
          { class: "options" },
          list.title ? el("div", { class: "options-title", text: list.title }) : null,
          (list.options || []).map((option) =>
            el(
              "button",
              {
                type: "button",
                class: "option",
                title: `Answer with row ${option.id}`,
                onclick: () => sendChoice({
                  list_row_id: option.id,
                  title: option.title,
                  description: option.description || null,
                }),
              },
              el("span", { class: "option-title", text: option.title }),
              option.description ? el("span", { class: "option-description", text: option.description }) : null,
            )),
        ),
      );
    }
    return box;
  }

  // -- drawing ------------------------------------------------------------------------------

  function nearBottom() {
    const box = $.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    $.messages.scrollTop = $.messages.scrollHeight;
  }

  /** Draw `records`, rebuilding only the items whose signature changed. */
  function render(records) {
    state.records = records;
    const box = $.messages;
    const stick = state.stickToBottom || nearBottom();
    const items = buildItems(records);
    const existing = new Map();
    for (const child of Array.from(box.children)) existing.set(child.dataset.key, child);
    const wanted = new Set();
    let cursor = box.firstChild;
    for (const item of items) {
      wanted.add(item.key);
      let node = existing.get(item.key);
      if (!node || signatures.get(node) !== item.sig) {
        const fresh = item.build();
        fresh.dataset.key = item.key;
        signatures.set(fresh, item.sig);
        if (node) {
          if (cursor === node) cursor = fresh;
          node.replaceWith(fresh);
        }
        node = fresh;
      }
      if (node === cursor) cursor = node.nextSibling;
      else box.insertBefore(node, cursor);
    }
    for (const child of Array.from(box.children)) {
      if (!wanted.has(child.dataset.key)) child.remove();
    }
    if (stick) scrollToBottom();
    state.stickToBottom = false;
  }

  function renderChats() {
    const seen = new Set();
    const entries = [];
    const add = (phone, instanceId, count) => {
      const key = `${instanceId || ""} ${phone}`;
      if (seen.has(key)) return;
      seen.add(key);
      entries.push({ phone, instanceId, count });
    };
    const first = state.instances[0] || null;
    for (const chat of state.conversations) {
      add(chat.phone, chat.instance_id === first ? null : chat.instance_id, chat.count);
    }
    for (const phone of state.started) add(phone, null, 0);
    add(state.phone, state.instanceId, null);
    // The open chat's own messages are polled more often than the chat list: its count is at
    // least what it shows, or a chat that just began reads "no messages yet" beside them.
    const open = entries.find((chat) => chat.phone === state.phone && chat.instanceId === state.instanceId);
    if (open) open.count = Math.max(open.count || 0, state.records.length);

    const list = $.chatList;
    list.replaceChildren(
      ...entries.map((chat) => {
        const active = chat.phone === state.phone && chat.instanceId === state.instanceId;
        const sub = chat.count ? `${chat.count} message${chat.count === 1 ? "" : "s"}` : "no messages yet";
        return el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: active ? "chat-item active" : "chat-item",
              "aria-current": active ? "true" : null,
              "data-phone": chat.phone,
              onclick: () => openChat(chat.phone, chat.instanceId),
            },
            el("span", { class: "avatar avatar-person" }, icon(ICONS.person, 26)),
            el(
              "span",
              { class: "chat-item-text" },
              el("span", { class: "chat-item-name", text: formatPhone(chat.phone) }),
              el("span", { class: "chat-item-sub", text: chat.instanceId ? `${sub} · ${chat.instanceId}` : sub }),
            ),
          ),
        );
      }),
    );
  }

  function showNotice(text) {
    $.noticeText.textContent = text;
    $.notice.hidden = false;
  }

  function hideNotice() {
    $.notice.hidden = true;
  }

  // -- talking to the emulator ----------------------------------------------------------------

  async function fetchJson(url, options) {
    const answer = await fetch(url, { cache: "no-store", ...options });
    let body = null;
    try {
      body = await answer.json();
    } catch {
      body = null;
    }
    return { ok: answer.ok, status: answer.status, body };
  }

  /** Make the customer say something: `content` is text, button_id+label, location... */
  async function say(content) {
    const body = { phone: state.phone, ...content };
    const name = $.name.value.trim();
    if (name) body.sender_name = name;
    if (state.instanceId) body.instance_id = state.instanceId;
    for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
    state.stickToBottom = true;
    let answer;
    try {
      answer = await fetchJson("/_emulator/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch {
      showNotice("The emulator is not answering: is it still running?");
      return false;
    }
    if (!answer.ok) {
      showNotice(`The emulator refused the message: ${(answer.body && answer.body.error) || `HTTP ${answer.status}`}`);
      return false;
    }
    const result = answer.body || {};
    if (result.webhook_error) showNotice(`The bot did not get this message: ${result.webhook_error}`);
    else if (result.webhook_status >= 400) showNotice(`The bot's webhook answered HTTP ${result.webhook_status}.`);
    else hideNotice();
    state.started.delete(state.phone);
    pollNow();
    return true;
  }

  function sendChoice(choice) {
    return say(choice);
  }

  let polling = false;
  let pollAgain = false;
  let pollTimer = null;

  async function poll() {
    polling = true;
    const phone = state.phone;
    const instanceId = state.instanceId;
    try {
      let url = `/_emulator/messages?phone=${encodeURIComponent(phone)}`;
      if (instanceId) url += `&instance_id=${encodeURIComponent(instanceId)}`;
      const answer = await fetch(url, { cache: "no-store" });
      const text = await answer.text();
      if (phone === state.phone && instanceId === state.instanceId) {
        $.app.classList.remove("offline");
        if (answer.ok && text !== state.payload) {
          state.payload = text;
          render(JSON.parse(text).messages || []);
          renderChats();
        }
      }
      if (state.polls % CHATS_EVERY === 0) await loadChats();
      state.polls += 1;
    } catch {
      $.app.classList.add("offline");
      $.sub.textContent = "offline: the emulator is not answering";
    } finally {
      polling = false;
      const again = pollAgain;
      pollAgain = false;
      pollTimer = window.setTimeout(poll, again ? 0 : POLL_MS);
    }
  }

  function pollNow() {
    state.polls = 0; // the chat list too
    if (polling) {
      pollAgain = true;
      return;
    }
    window.clearTimeout(pollTimer);
    poll();
  }

  async function loadChats() {
    const [chats, health] = await Promise.all([
      fetchJson("/_emulator/conversations"),
      state.instances.length ? null : fetchJson("/_emulator/health"),
    ]);
    if (health && health.ok) {
      state.instances = health.body.instances || [];
    }
    if (chats.ok) state.conversations = chats.body.conversations || [];
    const instance = state.instanceId || state.instances[0] || "";
    const short = instance.length > 16 ? `${instance.slice(0, 8)}…${instance.slice(-4)}` : instance;
    $.sub.textContent = instance ? `via the Z-API emulator · instance ${short}` : "via the Z-API emulator";
    $.sub.title = instance;
    $.instanceInfo.textContent = `${state.instances.length || "no"} instance${state.instances.length === 1 ? "" : "s"} · ${window.location.host}`;
    renderChats();
  }

  function openChat(phone, instanceId = null, { focus = true } = {}) {
    phone = String(phone).trim().replace(/[\s()+-]/g, "");
    if (!PHONE.test(phone)) {
      showNotice("A customer number is digits with the country code (8 to 15), like 5511999990001.");
      return false;
    }
    hideNotice();
    const changed = phone !== state.phone || instanceId !== state.instanceId;
    state.phone = phone;
    state.instanceId = instanceId;
    $.phone.value = phone;
    $.phone.classList.remove("invalid");
    store("phone", phone);
    if (changed) {
      state.payload = null;
      state.records = [];
      state.stickToBottom = true;
      $.messages.replaceChildren();
      render([]);
    }
    renderChats();
    pollNow();
    if (focus) $.text.focus();
    return true;
  }

  // -- the composer -------------------------------------------------------------------------

  function growComposer() {
    const box = $.text;
    box.style.height = "auto";
    box.style.height = `${Math.min(box.scrollHeight, 140)}px`;
  }

  async function submitText(event) {
    event.preventDefault();
    const text = $.text.value;
    if (!text.trim()) return;
    $.text.value = "";
    growComposer();
    const content = state.asOwner ? { text, from_me: true } : { text };
    if (!(await say(content))) {
      if (!$.text.value) $.text.value = text; // not lost: the customer can try again
      growComposer();
    }
  }

  function askImage() {
    const url = window.prompt("Image URL (http, https or data:image/...)", "");
    if (!url || !url.trim()) return;
    const caption = window.prompt("Caption (optional)", "") || "";
    say({ image_url: url.trim(), caption: caption || null });
  }

  function askLocation() {
    const where = window.prompt("Latitude, longitude", "-23.561684, -46.655981");
    if (!where) return;
    const [lat, lng] = where.split(",").map((part) => Number(part.trim()));
    if (!Number.isFinite(lat) || !Number.isFinite(lng)) {
      showNotice("A location is two numbers: latitude, longitude (like -23.56, -46.65).");
      return;
    }
    const address = window.prompt("Address (optional)", "") || "";
    say({ location: { latitude: lat, longitude: lng, address: address || null } });
  }

  function start() {
    $ = {
      app: document.querySelector(".app"),
      messages: document.getElementById("messages"),
      chatList: document.getElementById("chat-list"),
      phone: document.getElementById("phone"),
      name: document.getElementById("sender-name"),
      text: document.getElementById("text"),
      sub: document.getElementById("chat-sub"),
      notice: document.getElementById("notice"),
      noticeText: document.getElementById("notice-text"),
      instanceInfo: document.getElementById("instance-info"),
    };
    state.phone = stored("phone", DEFAULT_PHONE);
    $.phone.value = state.phone;
    $.name.value = stored("name", "");

    document.getElementById("composer").addEventListener("submit", submitText);
    $.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submitText(event);
    });
    $.text.addEventListener("input", growComposer);
    const changePhone = (focus) => {
      if (!openChat($.phone.value, null, { focus })) $.phone.classList.add("invalid");
    };
    // Enter moves on to the composer; leaving the field (to type a name, say) does not.
    $.phone.addEventListener("change", () => changePhone(false));
    $.phone.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        changePhone(true);
      }
    });
    $.messages.addEventListener("scroll", () => {
      state.atBottom = nearBottom();
    });
    $.name.addEventListener("change", () => store("name", $.name.value.trim()));
    document.getElementById("new-chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("new-chat");
      const phone = input.value.trim().replace(/[\s()+-]/g, "");
      if (openChat(phone, null)) {
        state.started.add(phone);
        input.value = "";
        renderChats();
      }
    });
    document.getElementById("notice-close").addEventListener("click", hideNotice);
    document.getElementById("send-image").addEventListener("click", askImage);
    document.getElementById("send-location").addEventListener("click", askLocation);
    const asOwner = document.getElementById("as-owner");
    asOwner.addEventListener("click", () => {
      state.asOwner = !state.asOwner;
      asOwner.setAttribute("aria-pressed", String(state.asOwner));
      $.text.placeholder = state.asOwner ? "Write as the shop, from its phone" : "Type a message";
      $.text.focus();
    });

    render([]);
    renderChats();
    poll();
    $.text.focus();
  }

  window.ZapiChat = { escapeHtml, formatText, safeUrl, formatPhone, openChat };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
