// A two-step button for actions that cannot be undone (remove a contact, revoke a share): the
// first press asks, in place, and only the second acts. No window.confirm: it blocks the page,
// looks foreign on phones, and some browsers suppress it.

import { h } from './dom.js';

/**
 * A span holding `label`; pressing it shows `question` with "Yes" and "Cancel". onYes() may
 * return a promise; the buttons stay disabled until it settles.
 */
export function confirmButton(label, question, onYes, attrs = {}) {
  const box = h('span', { class: 'confirm' });
  const ask = () => {
    const yes = h('button', { type: 'button', class: 'button danger confirm-yes' }, 'Yes');
    const no = h('button', { type: 'button', class: 'button confirm-no' }, 'Cancel');
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      no.disabled = true;
      try {
        await onYes();
      } finally {
        if (box.isConnected) idle();
      }
    });
    no.addEventListener('click', idle);
    box.replaceChildren(h('span', { class: 'confirm-question', role: 'alert' }, question), yes, no);
    no.focus();
  };
  const idle = () => box.replaceChildren(h('button', { type: 'button', class: 'button', ...attrs, onclick: ask }, label));
  idle();
  return box;
}
