/** A small typed event emitter: `on` returns the function that removes the listener. */
export class Emitter<Events extends Record<string, any>> {
  private listeners: { [K in keyof Events]?: Set<(event: Events[K]) => void> } = {};

  /** Call `listener` on every `event`; returns a function that stops it. */
  on<K extends keyof Events>(event: K, listener: (event: Events[K]) => void): () => void {
    (this.listeners[event] ??= new Set()).add(listener);
    return () => this.off(event, listener);
  }

  /** Stop calling `listener` on `event`. */
  off<K extends keyof Events>(event: K, listener: (event: Events[K]) => void): void {
    this.listeners[event]?.delete(listener);
  }

  /** Call every listener of `event`. A listener that throws does not stop the others: its error is rethrown asynchronously. */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of [...(this.listeners[event] ?? [])]) {
      try {
        listener(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}
