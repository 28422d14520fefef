// Cine: steps through the stack at a chosen frame rate, looping. It never skips a slice that is
// not loaded yet: it waits for it (the loader fetches nearest first, so it is usually there),
// which keeps the sequence honest on a slow link.

export const FPS_CHOICES = Object.freeze([2, 5, 10, 15, 20, 30]);
const DEFAULT_FPS = 10;

export class Cine {
  /** viewer provides: index, count, isLoaded(i), showSlice(i) (moves without stopping cine), onCineChange(). */
  constructor(viewer) {
    this.viewer = viewer;
    this.fps = DEFAULT_FPS;
    this.playing = false;
    this.raf = 0;
    this.last = 0;
  }

  toggle() {
    if (this.playing) this.stop();
    else this.play();
  }

  play() {
    if (this.playing || this.viewer.count() < 2) return;
    this.playing = true;
    this.last = performance.now();
    this.raf = requestAnimationFrame((t) => this.tick(t));
    this.viewer.onCineChange();
  }

  stop() {
    if (!this.playing) return;
    this.playing = false;
    cancelAnimationFrame(this.raf);
    this.viewer.onCineChange();
  }

  setFps(fps) {
    if (FPS_CHOICES.includes(fps)) this.fps = fps;
  }

  tick(now) {
    if (!this.playing) return;
    const period = 1000 / this.fps;
    if (now - this.last >= period) {
      const next = (this.viewer.index + 1) % this.viewer.count();
      if (this.viewer.isLoaded(next)) {
        this.viewer.showSlice(next);
        // Keep the rhythm without drifting, but never try to catch up a backlog.
        this.last = now - Math.min(period, (now - this.last) % period);
      }
    }
    this.raf = requestAnimationFrame((t) => this.tick(t));
  }
}
