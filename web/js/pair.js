// The Pair page, both sides of pairing:
// * "Show my code": the node issues a one-time ticket (optionally bound to a Patient ID, on a
//   clinic) and shows it as a QR code and as text, with its expiry counting down; the page then
//   long-polls the node and, once the other device used the ticket, shows the 6-digit
//   confirmation code.
// * "Scan or paste a code": the camera reads a QR code where the browser can (scan.js), or a
//   ticket is pasted; the node dials the issuer and pairs, and the page shows the same code.
// Both screens must show the same code: that is what proves no one sat in between.

import * as api from './api.js';
import { h, uniqueId } from './dom.js';
import { navBar } from './nav.js';
import { notifyError } from './notify.js';
import { pageHref } from './router.js';
import { cameraScanSupported, scanQr } from './scan.js';

const TICKET_PREFIX = 'discless:pair/';
/** Seconds one status request waits on the node (it caps the wait at 25). */
const STATUS_WAIT_S = 20;
const EXPIRY_CHOICES = [
  ['5m', '5 minutes'],
  ['15m', '15 minutes'],
  ['1h', '1 hour'],
  ['24h', '1 day'],
];

export function pairPage(root) {
  const controller = new AbortController();
  let stopCamera = null;
  let countdown = 0;

  const showTab = h('button', { type: 'button', class: 'tab', role: 'tab', 'aria-selected': 'true' }, 'Show my code');
  const scanTab = h('button', { type: 'button', class: 'tab', role: 'tab', 'aria-selected': 'false' }, 'Scan or paste a code');
  const showPanel = h('section', { class: 'pair-panel', role: 'tabpanel', 'aria-label': 'Show my code' });
  const scanPanel = h('section', { class: 'pair-panel', role: 'tabpanel', 'aria-label': 'Scan or paste a code', hidden: true });
  const page = h(
    'div',
    { class: 'page p2p-page pair-page' },
    navBar('pair'),
    h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Pair')),
    h('div', { class: 'tabs', role: 'tablist' }, showTab, scanTab),
    showPanel,
    scanPanel,
  );
  root.replaceChildren(page);

  const select = (scan) => {
    showTab.setAttribute('aria-selected', String(!scan));
    scanTab.setAttribute('aria-selected', String(scan));
    showPanel.hidden = scan;
    scanPanel.hidden = !scan;
    if (!scan) stopScan();
  };
  showTab.addEventListener('click', () => select(false));
  scanTab.addEventListener('click', () => select(true));

  // --- Show my code -------------------------------------------------------------------------
  const patientId = uniqueId('patient');
  const expiryId = uniqueId('expiry');
  const patientField = h(
    'div',
    { class: 'field', hidden: true },
    h('label', { for: patientId }, 'For patient (Patient ID, optional)'),
    h('input', { id: patientId, class: 'input', autocomplete: 'off', spellcheck: 'false' }),
    h('p', { class: 'hint' }, 'The phone that pairs receives every study of this patient, now and later.'),
  );
  const expiry = h(
    'select',
    { id: expiryId, class: 'input' },
    EXPIRY_CHOICES.map(([v, label]) => h('option', { value: v, selected: v === '15m' }, label)),
  );
  const issueButton = h('button', { type: 'button', class: 'button primary issue' }, 'Show a pairing code');
  const issued = h('div', { class: 'issued', 'aria-live': 'polite' });
  showPanel.append(
    h(
      'p',
      { class: 'hint' },
      'Let the other device scan this code (or send it the text). The code works once and expires.',
    ),
    patientField,
    h('div', { class: 'field' }, h('label', { for: expiryId }, 'Valid for'), expiry),
    issueButton,
    issued,
  );

  api.node(controller.signal).then(
    (n) => {
      patientField.hidden = n.role !== 'clinic';
    },
    (err) => notifyError(err, 'Node information could not be loaded'),
  );

  issueButton.addEventListener('click', async () => {
    issueButton.disabled = true;
    clearInterval(countdown);
    try {
      const input = document.getElementById(patientId);
      const t = await api.newTicket(
        { expires: expiry.value, for_patient: patientField.hidden ? null : input.value.trim() || null },
        controller.signal,
      );
      showTicket(t);
    } catch (err) {
      notifyError(err, 'No pairing code');
    } finally {
      issueButton.disabled = false;
      issueButton.textContent = 'New pairing code';
    }
  });

  function showTicket(t) {
    const status = h('p', { class: 'pair-status', role: 'status' }, 'Waiting for the other device…');
    const remaining = h('span', { class: 'countdown' });
    const text = h('textarea', {
      class: 'ticket-text',
      readonly: true,
      rows: 3,
      spellcheck: 'false',
      'aria-label': 'Pairing code as text',
    });
    text.value = t.ticket;
    const copy = h('button', { type: 'button', class: 'button copy' }, 'Copy');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(t.ticket);
        copy.textContent = 'Copied';
      } catch {
        text.select();
      }
    });
    const qr = h('img', {
      class: 'qr',
      alt: 'Pairing QR code',
      src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(t.svg)}`,
    });
    issued.replaceChildren(
      h('div', { class: 'qr-box' }, qr),
      h('p', { class: 'expiry' }, 'Expires in ', remaining, t.for_patient ? ' · bound to a patient' : ''),
      h('div', { class: 'ticket-row' }, text, copy),
      status,
    );
    const tick = () => {
      const left = Math.max(0, Math.round(t.expires_unix - Date.now() / 1000));
      remaining.textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
      if (left === 0) clearInterval(countdown);
    };
    tick();
    countdown = setInterval(tick, 1000);
    waitForPeer(t, status, issued);
  }

  async function waitForPeer(t, status, box) {
    while (!controller.signal.aborted && box.contains(status)) {
      let s;
      try {
        s = await api.ticketStatus(t.ticket, STATUS_WAIT_S, controller.signal);
      } catch (err) {
        if (err.name === 'AbortError') return;
        status.textContent = `Lost track of the pairing: ${err.message}`;
        return;
      }
      if (!box.contains(status)) return; // a newer ticket replaced this one
      if (s.state === 'paired' && s.paired) {
        clearInterval(countdown);
        box.replaceChildren(pairedView(s.paired));
        return;
      }
      if (s.state === 'expired') {
        clearInterval(countdown);
        status.textContent = 'This code expired unused. Make a new one.';
        box.querySelector('.qr-box')?.classList.add('expired');
        return;
      }
    }
  }

  // --- Scan or paste a code -----------------------------------------------------------------
  const pasteId = uniqueId('paste');
  const paste = h('textarea', {
    id: pasteId,
    class: 'input paste',
    rows: 3,
    spellcheck: 'false',
    autocomplete: 'off',
    placeholder: `${TICKET_PREFIX}…`,
  });
  const acceptButton = h('button', { type: 'button', class: 'button primary accept' }, 'Pair');
  const result = h('div', { class: 'accepted', 'aria-live': 'polite' });
  const video = h('video', { class: 'camera', hidden: true, 'aria-label': 'Camera' });
  const cameraButton = h('button', { type: 'button', class: 'button camera-toggle', hidden: true }, 'Use the camera');
  scanPanel.append(
    cameraButton,
    video,
    h(
      'div',
      { class: 'field' },
      h('label', { for: pasteId }, 'Paste the pairing code (text starting with discless:pair/)'),
      paste,
    ),
    acceptButton,
    result,
  );

  cameraScanSupported().then((ok) => {
    cameraButton.hidden = !ok;
  });

  cameraButton.addEventListener('click', async () => {
    if (stopCamera) {
      stopScan();
      return;
    }
    try {
      video.hidden = false;
      cameraButton.textContent = 'Stop the camera';
      stopCamera = await scanQr(
        video,
        (text) => text.trim().toLowerCase().startsWith(TICKET_PREFIX),
        (text) => {
          stopScan();
          paste.value = text;
          accept(text);
        },
      );
    } catch (err) {
      stopScan();
      notifyError(err, 'The camera could not be used');
    }
  });

  function stopScan() {
    stopCamera?.();
    stopCamera = null;
    video.hidden = true;
    cameraButton.textContent = 'Use the camera';
  }

  async function accept(text) {
    const ticket = text.trim();
    if (!ticket) {
      result.replaceChildren(h('p', { class: 'error-text' }, 'Paste a pairing code first.'));
      return;
    }
    acceptButton.disabled = true;
    result.replaceChildren(h('p', { class: 'pair-status', role: 'status' }, 'Pairing…'));
    try {
      const p = await api.acceptTicket(ticket, controller.signal);
      result.replaceChildren(pairedView(p));
      paste.value = '';
    } catch (err) {
      if (err.name === 'AbortError') return;
      result.replaceChildren(h('p', { class: 'error-text', role: 'alert' }, `Not paired: ${err.message}`));
    } finally {
      acceptButton.disabled = false;
    }
  }
  acceptButton.addEventListener('click', () => accept(paste.value));

  return {
    ready: () => Promise.resolve(),
    destroy() {
      controller.abort();
      clearInterval(countdown);
      stopScan();
    },
  };
}

/** The outcome both screens show: who, and the code to compare aloud. */
function pairedView(p) {
  const sas = String(p.sas ?? '');
  return h(
    'div',
    { class: 'paired' },
    h('p', { class: 'paired-who' }, 'Paired with ', h('strong', { class: 'peer-name' }, p.name), ` (${p.role})`),
    h('p', { class: 'sas-label' }, 'Confirmation code'),
    h('p', { class: 'sas', dataset: { sas } }, `${sas.slice(0, 3)} ${sas.slice(3)}`),
    h(
      'p',
      { class: 'hint' },
      'The other screen must show the same code. If it does not, remove this contact on the ',
      h('a', { href: pageHref('contacts') }, 'Contacts'),
      ' page: someone else may have answered.',
    ),
    p.queued_at
      ? h(
          'p',
          { class: 'hint queued' },
          `${p.name} is offline. The pairing request waits, encrypted, at their relay and completes when they come online. You can share studies with them now; those wait at the relay too.`,
        )
      : '',
  );
}
