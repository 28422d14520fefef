// Debian's Chromium, headless, on a fresh profile, as every browser test here launches it; and
// the console errors and uncaught exceptions a page raises, which every test fails on.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

// A persistent context on a new profile directory (`label` names it), with `device` options
// (viewport, touch…). `close()` closes the browser and removes the profile.
export async function freshContext(label, device, timeout) {
  const profile = await mkdtemp(path.join(tmpdir(), `discless-chromium-${label}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    headless: true,
    ...device,
  });
  context.setDefaultTimeout(timeout);
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

// Records `page`'s console errors and uncaught exceptions into `problems`, tagged with `who`.
export function watchProblems(page, problems, who) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push({ who, kind: 'console', text: m.text(), at: m.location()?.url });
  });
  page.on('pageerror', (e) => problems.push({ who, kind: 'exception', text: String(e.message ?? e) }));
  return page;
}
