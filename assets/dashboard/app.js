// The sluice queue dashboard. Every string that comes from the server (and
// so from mail: senders, recipients, subjects, remote replies) is written
// with textContent or as an SVG text node, never as markup. Every request
// carries X-Sluice-Request, which the admin API requires of state changes
// (a page on another origin cannot send it without a CORS preflight, which
// the API never grants).
'use strict';

(function () {
  const PAGE_SIZE = 50;
  const REFRESH_MS = 10000;
  const SVG = 'http://www.w3.org/2000/svg';
  const AGE_BUCKETS = ['0-5m', '5-10m', '10-20m', '20-40m', '40-80m', '80-160m', '160-320m', '320m+'];

  const $ = (id) => document.getElementById(id);

  // An element with a class and children (strings become text nodes).
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  class Unauthorized extends Error {}

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(method, path, body) {
    const options = {
      method,
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'X-Sluice-Request': '1' },
    };
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (response.status === 401) {
      showLogin();
      throw new Unauthorized('log in first');
    }
    if (!response.ok) {
      let message = response.status + ' ' + response.statusText;
      try {
        const error = await response.json();
        if (error && typeof error.error === 'string') message = error.error;
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  async function getJson(path) {
    return (await request('GET', path)).json();
  }

  let noticeTimer = null;
  function notice(text, isError) {
    const box = $('notice');
    box.textContent = text;
    box.className = isError ? 'notice error' : 'notice';
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, isError ? 15000 : 6000);
  }

  function failed(error) {
    if (error instanceof Unauthorized) return;
    notice(String(error.message || error), true);
  }

  // ---- formatting ----

  function age(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + 's';
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + 'm';
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + 'h ' + (minutes % 60) + 'm';
    return Math.floor(hours / 24) + 'd ' + (hours % 24) + 'h';
  }

  function since(time) {
    return age((Date.now() - Date.parse(time)) / 1000);
  }

  function number(value) {
    return Number(value || 0).toLocaleString('en');
  }

  function senderText(sender) {
    return sender === '' ? '<>' : sender;
  }

  function clock(unixSeconds) {
    const date = new Date(unixSeconds * 1000);
    return String(date.getHours()).padStart(2, '0') + ':' + String(date.getMinutes()).padStart(2, '0');
  }

  // ---- login ----

  function showLogin() {
    stopRefresh();
    $('overview').hidden = true;
    $('messages').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-token').focus();
  }

  async function login(event) {
    event.preventDefault();
    $('login-error').textContent = '';
    try {
      const response = await fetch('/login', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-Sluice-Request': '1', 'Content-Type': 'application/json' },
        body: JSON.stringify({ token: $('login-token').value }),
      });
      if (!response.ok) {
        $('login-error').textContent = response.status === 401 ? 'Wrong token.' : 'Login failed (' + response.status + ').';
        return;
      }
      $('login-token').value = '';
      $('login').hidden = true;
      start();
    } catch (error) {
      $('login-error').textContent = String(error.message || error);
    }
  }

  async function logout() {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Sluice-Request': '1' } });
    showLogin();
  }

  // ---- tabs ----

  let view = 'overview';
  let refreshTimer = null;
  // Bumped whenever the view changes, so a read in flight does not start a
  // second refresh loop.
  let generation = 0;

  function stopRefresh() {
    generation += 1;
    clearTimeout(refreshTimer);
    refreshTimer = null;
  }

  // The overview is read again REFRESH_MS after the last read ended, or
  // later when reading took long (the summary scans the whole queue: at
  // 100,000 messages that is work for the server), and not while the tab is
  // hidden.
  async function refreshOverview(mine) {
    const begun = Date.now();
    if (!document.hidden) await loadOverview();
    if (mine !== generation || view !== 'overview' || $('overview').hidden) return;
    const took = Date.now() - begun;
    refreshTimer = setTimeout(() => refreshOverview(mine), Math.max(REFRESH_MS, 10 * took));
  }

  function show(name) {
    view = name;
    $('overview').hidden = name !== 'overview';
    $('messages').hidden = name !== 'messages';
    $('tab-overview').classList.toggle('active', name === 'overview');
    $('tab-messages').classList.toggle('active', name === 'messages');
    stopRefresh();
    generation += 1;
    if (name === 'overview') {
      refreshOverview(generation);
    } else {
      loadPage();
    }
  }

  async function start() {
    try {
      const session = await getJson('/v1/dashboard/session');
      $('logout').hidden = !session.token_required;
      await getJson('/v1/dashboard/state');
    } catch (error) {
      failed(error);
      return;
    }
    $('login').hidden = true;
    route();
  }

  // ---- addresses ----
  // Every view has an address, so that it can be linked to, reloaded and
  // reached with back and forward:
  //   #/overview?range=6                      the overview, charts over 1, 6 or 24 hours
  //   #/messages?status=…&domain=…&sender=…&older_than=…&page=2&after=CURSOR
  //   #/messages/ID                           a message's detail (over the list)
  // The page's controls change the address; the view follows the address.

  const FILTERS = [['filter-status', 'status'], ['filter-domain', 'domain'], ['filter-sender', 'sender'], ['filter-older', 'older_than']];

  function listAddress(pageIndex, after) {
    const params = filterQuery();
    if (pageIndex > 0 && after) {
      params.set('page', String(pageIndex + 1));
      params.set('after', after);
    }
    const query = params.toString();
    return '#/messages' + (query ? '?' + query : '');
  }

  function overviewAddress() {
    return '#/overview' + (rangeHours === 24 ? '' : '?range=' + rangeHours);
  }

  // Goes to `address`: a new history entry when it differs from the
  // current one (hashchange then calls route), else the view is read again.
  function navigate(address) {
    if (location.hash === address) {
      route();
    } else {
      location.hash = address;
    }
  }

  function setRange(hours) {
    rangeHours = [1, 6, 24].includes(hours) ? hours : 24;
    for (const button of document.querySelectorAll('[data-range]')) {
      button.classList.toggle('active', Number(button.dataset.range) === rangeHours);
      if (Number(button.dataset.range) === rangeHours) {
        for (const title of document.querySelectorAll('.range-title')) title.textContent = button.textContent;
      }
    }
    if (lastHistory) renderHistory(lastHistory);
  }

  // Shows what the address names.
  function route() {
    if (!$('login').hidden) return;
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, query] = hash.split('?', 2);
    const params = new URLSearchParams(query || '');
    const parts = path.split('/').filter((part) => part);
    if (parts[0] === 'messages') {
      for (const [id, key] of FILTERS) $(id).value = params.get(key) || '';
      const wanted = Math.max(1, Number.parseInt(params.get('page') || '1', 10) || 1) - 1;
      const after = params.get('after');
      if (wanted > 0 && after) {
        if (cursors[wanted] !== after) cursors = cursors.slice(0, wanted).concat([after]);
        page = wanted;
      } else {
        cursors = [null];
        page = 0;
      }
      const id = parts.length > 1 ? decodeURIComponent(parts.slice(1).join('/')) : null;
      if (view !== 'messages' || listShown !== listAddress(page, cursors[page])) {
        show('messages');
      }
      if (id) {
        showDetail(id);
      } else {
        $('detail').hidden = true;
        detailId = null;
      }
    } else {
      setRange(Number.parseInt(params.get('range') || '24', 10));
      show('overview');
    }
  }

  // ---- overview ----

  async function loadOverview() {
    const tasks = [
      getJson('/v1/dashboard/state').then(renderState),
      getJson('/v1/dashboard/history').then(renderHistory),
      Promise.all([getJson('/v1/dashboard/overview'), loadSuspensions()])
        .then(([overview, suspended]) => renderOverview(overview, suspended)),
    ];
    const results = await Promise.allSettled(tasks);
    for (const result of results) {
      if (result.status === 'rejected') failed(result.reason);
    }
    document.body.dataset.overviewLoaded = String(Date.now());
  }

  function renderState(state) {
    $('server').textContent = state.hostname + ' · sluice ' + state.version + ' · up ' + since(state.started_at);
    $('stat-queued').textContent = number(state.queue.messages);
    $('stat-held').textContent = number(state.queue.held);
    $('stat-deferred').textContent = number(state.queue.deferred);
    $('stat-pending').textContent = number(state.queue.pending);
    $('stat-delivery').textContent = state.delivery;
    $('stat-delivery').classList.toggle('bad', state.delivery !== 'running');
    $('stat-inflight').textContent = number(state.deliveries_in_flight) + ' transactions in flight';
    $('stat-connections').textContent = number(state.connections_active);
    const totals = state.totals;
    $('stat-totals').textContent = 'since start: ' + number(totals.received) + ' received, ' + number(totals.sent) +
      ' sent, ' + number(totals.deferred) + ' deferred, ' + number(totals.bounced) + ' bounced';
    const table = clear($('listeners'));
    table.append(el('tr', null, el('th', null, 'Address'), el('th', null, 'Kind')));
    for (const listener of state.listeners) {
      table.append(el('tr', null, el('td', 'mono', listener.address), el('td', null, listener.kind)));
    }
    if (state.spool_failure) notice('Spool failure: ' + state.spool_failure, true);
  }

  // A line chart over the last 24 hours: series = [{cls, values}], one
  // value per entry of `times` (unix seconds).
  // The charts' time range, in hours (1, 6 or 24), and the last history
  // read, drawn again when the range changes.
  let rangeHours = 24;
  let lastHistory = null;

  function chart(container, times, series) {
    const width = 720, height = 180, left = 48, right = 8, top = 8, bottom = 22;
    const end = Date.now() / 1000, begin = end - rangeHours * 3600;
    const shown = times.map((t, index) => [t, index]).filter(([t]) => t + 60 > begin);
    times = shown.map(([t]) => t);
    series = series.map((line) => ({ cls: line.cls, values: shown.map(([, index]) => line.values[index]) }));
    let max = 1;
    for (const line of series) for (const value of line.values) max = Math.max(max, value);
    const magnitude = Math.pow(10, Math.floor(Math.log10(max)));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => max / s <= 5) || magnitude * 10;
    const top_value = Math.ceil(max / step) * step;
    const x = (t) => left + (width - left - right) * (t - begin) / (end - begin);
    const y = (v) => top + (height - top - bottom) * (1 - v / top_value);
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart-svg', role: 'img' });
    for (let v = 0; v <= top_value + step / 2; v += step) {
      root.append(svg('line', { x1: left, x2: width - right, y1: y(v), y2: y(v), class: 'grid' }));
      root.append(svg('text', { x: left - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, number(v)));
    }
    const tick = { 1: 600, 6: 3600, 24: 4 * 3600 }[rangeHours];
    for (let ago = rangeHours * 3600; ago >= 0; ago -= tick) {
      const t = end - ago;
      root.append(svg('text', { x: x(t), y: height - 6, class: 'axis', 'text-anchor': ago === 0 ? 'end' : 'middle' },
        ago === 0 ? 'now' : clock(t)));
    }
    for (const line of series) {
      if (!times.length) continue;
      let path = '';
      times.forEach((t, index) => {
        path += (index === 0 ? 'M' : 'L') + x(t + 30).toFixed(1) + ' ' + y(line.values[index]).toFixed(1);
      });
      root.append(svg('path', { d: path, class: 'line ' + line.cls }));
      if (times.length <= 3) {
        times.forEach((t, index) => {
          root.append(svg('circle', { cx: x(t + 30), cy: y(line.values[index]), r: 3, class: 'dot ' + line.cls }));
        });
      }
    }
    if (!times.length) {
      root.append(svg('text', { x: width / 2, y: height / 2, class: 'axis', 'text-anchor': 'middle' }, 'no samples yet'));
    }
    clear(container).append(root);
  }

  function renderHistory(history) {
    lastHistory = history;
    const minutes = history.minutes;
    const times = minutes.map((m) => m.at);
    chart($('chart-queue'), times, [
      { cls: 'queued', values: minutes.map((m) => m.queued) },
      { cls: 'held', values: minutes.map((m) => m.held) },
    ]);
    chart($('chart-outcomes'), times, [
      { cls: 'sent', values: minutes.map((m) => m.sent) },
      { cls: 'deferred', values: minutes.map((m) => m.deferred) },
      { cls: 'bounced', values: minutes.map((m) => m.bounced) },
    ]);
  }

  // `suspended`: the destinations GET /v1/suspensions names.
  function renderOverview(overview, suspended) {
    const summary = overview.summary;
    const table = clear($('heatmap'));
    const head = el('tr', null, el('th', null, 'Destination'), el('th', 'num', 'Messages'), el('th', 'num', 'Deferred'), el('th', 'num', 'Held'));
    for (const bucket of AGE_BUCKETS) head.append(el('th', 'num', bucket));
    table.append(head);
    const rows = [{ domain: 'all', ...summary.total, total: true }, ...summary.domains.slice(0, 20)];
    let max = 1;
    for (const row of summary.domains) for (const bucket of AGE_BUCKETS) max = Math.max(max, row.ages[bucket] || 0);
    for (const row of rows) {
      const name = el('td', row.total ? 'total' : 'domain');
      if (row.total) {
        name.textContent = 'all destinations';
      } else {
        const link = el('button', 'link', row.domain);
        link.type = 'button';
        link.addEventListener('click', () => {
          navigate('#/messages?domain=' + encodeURIComponent(row.domain));
        });
        name.append(link);
        if (row.suspended || suspended.has(row.domain)) name.append(el('span', 'badge', 'suspended'));
      }
      const tr = el('tr', row.total ? 'total' : null, name, el('td', 'num', number(row.messages)),
        el('td', 'num', number(row.deferred)), el('td', 'num', number(row.held)));
      for (const bucket of AGE_BUCKETS) {
        const count = row.ages[bucket] || 0;
        const level = count === 0 ? 0 : Math.max(1, Math.ceil(5 * count / max));
        tr.append(el('td', 'num heat' + (row.total ? '' : ' heat-' + level), count ? number(count) : ''));
      }
      table.append(tr);
    }
    if (!summary.domains.length) {
      table.append(el('tr', null, el('td', 'empty', 'The queue is empty.')));
    }
    if (summary.domains.length > 20) {
      table.append(el('tr', null, el('td', 'empty', (summary.domains.length - 20) + ' more destinations not shown')));
    }
    // Top deferral reasons: every deferred recipient's last reply, counted.
    const list = clear($('reasons'));
    list.append(el('tr', null, el('th', 'num', 'Recipients'), el('th', null, 'Reply'), el('th', null, 'Destinations')));
    for (const reason of overview.reasons) {
      list.append(el('tr', null, el('td', 'num', number(reason.recipients)), el('td', 'mono reply', reason.reply),
        el('td', null, reason.domains.join(', ') + (reason.domains.length >= 5 ? ', …' : ''))));
    }
    if (overview.reasons_other) {
      list.append(el('tr', null, el('td', 'num', number(overview.reasons_other)), el('td', 'empty', 'other replies'), el('td')));
    }
    if (!overview.reasons.length) list.append(el('tr', null, el('td', 'empty', 'none')));
  }

  // Shows the suspensions; resolves to the set of suspended destinations.
  async function loadSuspensions() {
    const box = $('suspensions');
    const suspensions = (await getJson('/v1/suspensions')).suspensions || [];
    clear(box);
    if (!suspensions.length) {
      box.append(el('p', 'empty', 'none'));
      return new Set();
    }
    const table = el('table', 'list', el('tr', null, el('th', null, 'Destination'), el('th', null, 'Until'), el('th', null, 'Reason')));
    for (const entry of suspensions) {
      table.append(el('tr', null, el('td', 'mono', entry.destination), el('td', null, entry.until), el('td', 'reply', entry.reason || '')));
    }
    box.append(table);
    return new Set(suspensions.map((entry) => String(entry.destination).toLowerCase()));
  }

  // ---- messages ----

  // Cursors of the pages shown so far: cursors[i] is the `after` of page i.
  let cursors = [null];
  let page = 0;
  let nextCursor = null;

  function filterQuery() {
    const params = new URLSearchParams();
    const status = $('filter-status').value;
    if (status) params.set('status', status);
    for (const [id, key] of [['filter-domain', 'domain'], ['filter-sender', 'sender'], ['filter-older', 'older_than']]) {
      const value = $(id).value.trim();
      if (value) params.set(key, value);
    }
    return params;
  }

  function describeFilter() {
    const params = filterQuery();
    const parts = [];
    for (const [key, value] of params) parts.push(key + '=' + value);
    return parts.length ? 'matching ' + parts.join(', ') : 'in the queue (no filter: ALL messages)';
  }

  // The address of the list on screen (see route).
  let listShown = null;

  async function loadPage() {
    listShown = listAddress(page, cursors[page]);
    const params = filterQuery();
    params.set('limit', String(PAGE_SIZE));
    if (cursors[page]) params.set('after', cursors[page]);
    let response;
    try {
      response = await request('GET', '/v1/queue?' + params.toString());
    } catch (error) {
      failed(error);
      return;
    }
    const messages = await response.json();
    nextCursor = response.headers.get('Sluice-Next-After');
    const body = clear($('message-list').tBodies[0]);
    for (const message of messages) body.append(messageRow(message));
    if (!messages.length) body.append(el('tr', null, el('td', 'empty', 'No message matches.')));
    $('page-info').textContent = 'page ' + (page + 1) + (messages.length ? ' · ' + messages.length + ' messages' : '');
    $('page-prev').disabled = page === 0;
    $('page-first').disabled = page === 0;
    $('page-next').disabled = !nextCursor;
    document.body.dataset.listLoaded = String(Date.now());
  }

  function messageState(message) {
    if (message.held) return 'held';
    const counts = new Map();
    for (const recipient of message.recipients) counts.set(recipient.status, (counts.get(recipient.status) || 0) + 1);
    return [...counts.entries()].map(([status, count]) => (message.recipients.length > 1 ? count + ' ' : '') + status).join(', ');
  }

  function messageRow(message) {
    const recipients = message.recipients;
    const first = recipients.length ? recipients[0].address : '';
    const reply = (recipients.find((r) => r.last_reply) || {}).last_reply || '';
    const tries = recipients.reduce((most, r) => Math.max(most, r.attempts), 0);
    const id = el('button', 'link mono', message.id);
    id.type = 'button';
    id.addEventListener('click', () => navigate(messageAddress(message.id)));
    const row = el('tr', message.held ? 'held' : null,
      el('td', null, id),
      el('td', 'num', since(message.received_at)),
      el('td', 'sender', senderText(message.sender)),
      el('td', 'rcpt', first + (recipients.length > 1 ? ' +' + (recipients.length - 1) : '')),
      el('td', 'state', messageState(message)),
      el('td', 'num', tries),
      el('td', 'reply', reply));
    row.dataset.id = message.id;
    row.cells[1].title = message.received_at;
    return row;
  }

  // ---- detail ----

  let detailId = null;

  function unfoldHeader(headers, name) {
    const lines = headers.split(/\r?\n/);
    const wanted = name.toLowerCase() + ':';
    for (let i = 0; i < lines.length; i++) {
      if (lines[i].toLowerCase().startsWith(wanted)) {
        let value = lines[i].slice(wanted.length);
        while (i + 1 < lines.length && /^[ \t]/.test(lines[i + 1])) value += ' ' + lines[++i].trim();
        return value.trim();
      }
    }
    return null;
  }

  // RFC 2047 encoded words (`=?UTF-8?B?…?=`, `=?ISO-8859-1?Q?…?=`) as text;
  // a word that does not decode is left as it is.
  function decodeWords(text) {
    return text.replace(/=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=(?:\s+(?==\?))?/g, (whole, charset, encoding, data) => {
      try {
        let bytes;
        if (encoding.toUpperCase() === 'B') {
          bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        } else {
          const out = [];
          const chars = data.replace(/_/g, ' ');
          for (let i = 0; i < chars.length; i++) {
            const hex = chars.slice(i + 1, i + 3);
            if (chars[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
              out.push(parseInt(hex, 16));
              i += 2;
            } else {
              out.push(chars.charCodeAt(i) & 0xff);
            }
          }
          bytes = Uint8Array.from(out);
        }
        return new TextDecoder(charset.split('*')[0]).decode(bytes);
      } catch (_) {
        return whole;
      }
    });
  }

  function envelopeEntry(list, term, value, className) {
    list.append(el('dt', null, term), el('dd', className || null, value));
  }

  // A message's address keeps the list it was opened from.
  function messageAddress(id) {
    const list = listAddress(page, cursors[page]);
    const [, query] = list.split('?', 2);
    return '#/messages/' + encodeURIComponent(id) + (query ? '?' + query : '');
  }

  async function showDetail(id) {
    detailId = id;
    let message, headers = '';
    try {
      message = await getJson('/v1/queue/' + encodeURIComponent(id));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        $('detail').hidden = true;
        notice('Message ' + id + ' is no longer in the queue.');
        return;
      }
      failed(error);
      return;
    }
    try {
      headers = await (await request('GET', '/v1/queue/' + encodeURIComponent(id) + '/message?headers=true')).text();
    } catch (error) {
      headers = '(headers unavailable: ' + (error.message || error) + ')';
    }
    $('detail-id').textContent = message.id;
    const envelope = clear($('detail-envelope'));
    envelope.append();
    envelopeEntry(envelope, 'Sender', senderText(message.sender), 'sender');
    envelopeEntry(envelope, 'Subject', decodeWords(unfoldHeader(headers, 'Subject') || '(none)'), 'subject');
    envelopeEntry(envelope, 'Received', message.received_at + ' (' + since(message.received_at) + ' ago)');
    envelopeEntry(envelope, 'Size', number(message.size) + ' bytes');
    envelopeEntry(envelope, 'Held', message.held ? 'yes' : 'no', 'held-flag');
    if (message.ret) envelopeEntry(envelope, 'RET', message.ret);
    if (message.envid) envelopeEntry(envelope, 'ENVID', message.envid);
    if (message.delay_notified_at) envelopeEntry(envelope, 'Delay notice', message.delay_notified_at);

    const recipients = clear($('detail-recipients'));
    recipients.append(el('tr', null, el('th', null, 'Recipient'), el('th', null, 'Status'), el('th', 'num', 'Attempts'),
      el('th', null, 'Next attempt'), el('th', null, 'Last reply')));
    const attempts = clear($('detail-attempts'));
    attempts.append(el('tr', null, el('th', null, 'Time'), el('th', null, 'Recipient'), el('th', null, 'Relay'),
      el('th', null, 'TLS'), el('th', null, 'Reply')));
    const log = [];
    for (const recipient of message.recipients) {
      recipients.append(el('tr', null, el('td', 'rcpt', recipient.address), el('td', 'status-' + recipient.status, recipient.status),
        el('td', 'num', recipient.attempts), el('td', null, recipient.next_attempt_at || '–'),
        el('td', 'reply', recipient.last_reply || '')));
      for (const attempt of recipient.attempts_log || []) log.push({ ...attempt, recipient: recipient.address });
    }
    log.sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
    for (const attempt of log) {
      attempts.append(el('tr', null, el('td', null, attempt.time), el('td', 'rcpt', attempt.recipient),
        el('td', 'mono', attempt.relay), el('td', null, attempt.tls), el('td', 'reply', attempt.reply)));
    }
    if (!log.length) attempts.append(el('tr', null, el('td', 'empty', 'no attempt yet')));
    $('detail-headers').textContent = headers;
    $('detail').hidden = false;
    document.body.dataset.detailLoaded = message.id;
    $('detail').scrollIntoView({ block: 'start' });
  }

  // ---- actions ----

  function confirmDialog(text) {
    const dialog = $('confirm');
    $('confirm-text').textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => {
        $('confirm-yes').removeEventListener('click', yes);
        $('confirm-no').removeEventListener('click', no);
        dialog.removeEventListener('cancel', no);
        dialog.close();
        resolve(answer);
      };
      const yes = () => done(true);
      const no = () => done(false);
      $('confirm-yes').addEventListener('click', yes);
      $('confirm-no').addEventListener('click', no);
      dialog.addEventListener('cancel', no);
      dialog.showModal();
    });
  }

  const PAST = { retry: 'retried', hold: 'held', release: 'released', bounce: 'bounced', delete: 'deleted' };

  async function act(action) {
    const id = detailId;
    if (!id) return;
    if (!(await confirmDialog(action[0].toUpperCase() + action.slice(1) + ' message ' + id + '?'))) return;
    try {
      if (action === 'delete') {
        await request('DELETE', '/v1/queue/' + encodeURIComponent(id));
      } else {
        await request('POST', '/v1/queue/' + encodeURIComponent(id) + '/' + action);
      }
      notice('Message ' + id + ' ' + PAST[action] + '.');
    } catch (error) {
      failed(error);
    }
    await loadPage();
    await showDetail(id);
  }

  async function bulk() {
    const action = $('bulk-action').value;
    const filter = describeFilter();
    if (!(await confirmDialog(action[0].toUpperCase() + action.slice(1) + ' every message ' + filter + '?'))) return;
    try {
      const response = await request('POST', '/v1/queue/' + action + '?' + filterQuery().toString());
      const result = await response.json();
      const count = result[PAST[action]];
      notice(number(count) + ' messages ' + PAST[action] + '.');
    } catch (error) {
      failed(error);
    }
    cursors = [null];
    page = 0;
    await loadPage();
  }

  // ---- wiring ----

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    $('tab-overview').addEventListener('click', () => navigate(overviewAddress()));
    $('tab-messages').addEventListener('click', () => navigate(listAddress(page, cursors[page])));
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      listShown = null;
      navigate(listAddress(0, null));
    });
    $('page-next').addEventListener('click', () => {
      if (!nextCursor) return;
      cursors[page + 1] = nextCursor;
      navigate(listAddress(page + 1, nextCursor));
    });
    $('page-prev').addEventListener('click', () => {
      // Reached by a link to a later page, the earlier cursors are unknown:
      // back to the first page then.
      const previous = page - 1;
      navigate(previous > 0 && cursors[previous] ? listAddress(previous, cursors[previous]) : listAddress(0, null));
    });
    $('page-first').addEventListener('click', () => {
      navigate(listAddress(0, null));
    });
    window.addEventListener('hashchange', route);
    $('bulk-apply').addEventListener('click', bulk);
    for (const button of document.querySelectorAll('[data-range]')) {
      button.addEventListener('click', () => {
        setRange(Number(button.dataset.range));
        navigate(overviewAddress());
      });
    }
    $('detail-close').addEventListener('click', () => navigate(listAddress(page, cursors[page])));
    for (const button of document.querySelectorAll('#detail [data-action]')) {
      button.addEventListener('click', () => act(button.dataset.action));
    }
    start();
  });
})();
