// Input of the viewer, mapped onto viewer actions.
//
//   mouse   left drag: the current tool (scroll, W/L, pan, zoom, measure); right drag: W/L;
//           middle drag: pan; wheel: slices; Ctrl/⌘ + wheel (and trackpad pinch): zoom at cursor
//   touch   one finger: the current tool; two fingers: pinch to zoom, move to pan
//   keys    ↑/↓ (←/→, k/j): previous/next slice; PageUp/PageDown: a tenth of the stack;
//           Home/End: first/last; + / −: zoom; f: fit; r: reset; Space: cine; Esc: cancel/stop;
//           s, w, p, z, m: tools (letters only while the viewer has focus)
//
// Pointer Events cover mouse, pen and touch alike; the surface has touch-action: none so the
// browser leaves every gesture to us.

/** Sensitivity of zoom drags: this many px of vertical drag zoom by a factor e. */
const ZOOM_DRAG_PX = 150;
/** A wheel event at least this large (px) is a mouse notch: one slice. Smaller deltas accumulate. */
const WHEEL_NOTCH_PX = 40;

const TOOL_KEYS = { s: 'scroll', w: 'wl', p: 'pan', z: 'zoom', m: 'measure' };

export function attachInput(surface, viewer) {
  const pointers = new Map(); // pointerId → {x, y} client px
  let gesture = null;
  let wheelRest = 0;

  const local = (x, y) => {
    const r = surface.getBoundingClientRect();
    return { x: x - r.left, y: y - r.top };
  };

  function toolGesture(tool, x0, y0) {
    const start = local(x0, y0);
    switch (tool) {
      case 'scroll': {
        const from = viewer.index;
        const step = viewer.pxPerSlice();
        return { move: (dx, dy) => viewer.setSlice(from + Math.trunc(dy / step)) };
      }
      case 'wl': {
        const w0 = viewer.currentWindow();
        if (!w0 || !viewer.canWindow()) return null;
        const k = viewer.windowSensitivity(w0);
        viewer.beginInteraction();
        return {
          // Right: wider window (less contrast); down: higher level (darker).
          move: (dx, dy) => viewer.dragWindow(w0, dx * k, dy * k),
          end: () => viewer.endInteraction(),
        };
      }
      case 'pan': {
        let last = { dx: 0, dy: 0 };
        return {
          move: (dx, dy) => {
            viewer.panBy(dx - last.dx, dy - last.dy);
            last = { dx, dy };
          },
        };
      }
      case 'zoom': {
        let lastDy = 0;
        return {
          move: (dx, dy) => {
            viewer.zoomAt(Math.exp(-(dy - lastDy) / ZOOM_DRAG_PX), start.x, start.y);
            lastDy = dy;
          },
        };
      }
      case 'measure':
        viewer.measureBegin(start);
        return {
          move: (dx, dy) => viewer.measureMove({ x: start.x + dx, y: start.y + dy }),
          end: (dx, dy) => viewer.measureEnd({ x: start.x + dx, y: start.y + dy }),
          cancel: () => viewer.measureCancel(),
        };
      default:
        return null;
    }
  }

  function pinchGesture() {
    const [a, b] = [...pointers.values()];
    let dist = Math.hypot(a.x - b.x, a.y - b.y);
    let mid = local((a.x + b.x) / 2, (a.y + b.y) / 2);
    return {
      pinch: true,
      update() {
        const [p, q] = [...pointers.values()];
        const d = Math.hypot(p.x - q.x, p.y - q.y);
        const m = local((p.x + q.x) / 2, (p.y + q.y) / 2);
        if (dist > 0 && d > 0) viewer.zoomAt(d / dist, mid.x, mid.y);
        viewer.panBy(m.x - mid.x, m.y - mid.y);
        dist = d;
        mid = m;
      },
    };
  }

  function onDown(e) {
    if (e.pointerType === 'mouse' && e.button > 2) return;
    e.preventDefault();
    surface.focus({ preventScroll: true });
    try {
      surface.setPointerCapture(e.pointerId);
    } catch {
      // A synthetic or already-released pointer cannot be captured; moves still arrive.
    }
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, x0: e.clientX, y0: e.clientY });
    if (pointers.size === 2) {
      if (gesture?.cancel) gesture.cancel();
      else gesture?.end?.(0, 0);
      gesture = pinchGesture();
      return;
    }
    if (pointers.size > 2) return;
    const tool = e.pointerType === 'mouse' ? [viewer.mode, 'pan', 'wl'][e.button] : viewer.mode;
    gesture = toolGesture(tool, e.clientX, e.clientY);
    if (gesture) Object.assign(gesture, { x0: e.clientX, y0: e.clientY });
  }

  function onMove(e) {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    p.x = e.clientX;
    p.y = e.clientY;
    if (!gesture) return;
    if (gesture.pinch) gesture.update();
    else gesture.move(e.clientX - gesture.x0, e.clientY - gesture.y0);
  }

  function onUp(e) {
    if (!pointers.delete(e.pointerId)) return;
    if (!gesture) return;
    if (gesture.pinch) {
      // Lifting one finger ends the pinch; the other does nothing until it is lifted too.
      if (pointers.size < 2) gesture = { move() {} };
      return;
    }
    if (e.type === 'pointercancel' && gesture.cancel) gesture.cancel();
    else gesture.end?.(e.clientX - gesture.x0, e.clientY - gesture.y0);
    gesture = null;
  }

  function onWheel(e) {
    e.preventDefault();
    const scale = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? 800 : 1;
    const dy = e.deltaY * scale;
    if (e.ctrlKey || e.metaKey) {
      const p = local(e.clientX, e.clientY);
      viewer.zoomAt(Math.exp(-dy * 0.002), p.x, p.y);
      return;
    }
    if (Math.abs(dy) >= WHEEL_NOTCH_PX) {
      wheelRest = 0;
      viewer.step(Math.sign(dy));
      return;
    }
    wheelRest += dy;
    if (Math.abs(wheelRest) >= WHEEL_NOTCH_PX) {
      viewer.step(Math.sign(wheelRest));
      wheelRest = 0;
    }
  }

  function onKey(e) {
    if (e.defaultPrevented || e.ctrlKey || e.altKey || e.metaKey) return;
    const t = e.target;
    if (t instanceof Element && t.closest('input, select, textarea, [contenteditable], [data-own-keys]')) return;
    const inViewer = t === document.body || (t instanceof Node && viewer.root.contains(t));
    const page = Math.max(1, Math.round(viewer.count() / 10));
    const actions = {
      ArrowDown: () => viewer.step(1),
      ArrowRight: () => viewer.step(1),
      ArrowUp: () => viewer.step(-1),
      ArrowLeft: () => viewer.step(-1),
      PageDown: () => viewer.step(page),
      PageUp: () => viewer.step(-page),
      Home: () => viewer.setSlice(0),
      End: () => viewer.setSlice(viewer.count() - 1),
      Escape: () => viewer.escape(),
    };
    if (inViewer) {
      Object.assign(actions, {
        j: () => viewer.step(1),
        k: () => viewer.step(-1),
        '+': () => viewer.zoomCentre(1.25),
        '=': () => viewer.zoomCentre(1.25),
        '-': () => viewer.zoomCentre(0.8),
        f: () => viewer.fit(),
        r: () => viewer.reset(),
      });
      if (!(t instanceof HTMLButtonElement)) actions[' '] = () => viewer.toggleCine();
      for (const [key, tool] of Object.entries(TOOL_KEYS)) actions[key] = () => viewer.setMode(tool);
    }
    const action = actions[e.key];
    if (!action) return;
    e.preventDefault();
    action();
  }

  const preventMenu = (e) => e.preventDefault();
  surface.addEventListener('pointerdown', onDown);
  surface.addEventListener('pointermove', onMove);
  surface.addEventListener('pointerup', onUp);
  surface.addEventListener('pointercancel', onUp);
  surface.addEventListener('wheel', onWheel, { passive: false });
  surface.addEventListener('contextmenu', preventMenu);
  document.addEventListener('keydown', onKey);
  return () => {
    surface.removeEventListener('pointerdown', onDown);
    surface.removeEventListener('pointermove', onMove);
    surface.removeEventListener('pointerup', onUp);
    surface.removeEventListener('pointercancel', onUp);
    surface.removeEventListener('wheel', onWheel);
    surface.removeEventListener('contextmenu', preventMenu);
    document.removeEventListener('keydown', onKey);
  };
}
