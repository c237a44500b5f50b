/**
 * Where the client keeps each channel's position (`{epoch, serial}` as JSON), so that a reload
 * or an app restart resumes where it stopped. Methods may be synchronous or return promises.
 */
export interface PositionStorage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}

/** The `getItem`/`setItem`/`removeItem` shape of `localStorage`, `sessionStorage` and React Native's AsyncStorage. */
export interface ItemStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** Positions in memory: they last as long as the page or process. */
export function memoryStorage(): PositionStorage {
  const m = new Map<string, string>();
  return { get: (k) => m.get(k), set: (k, v) => void m.set(k, v), remove: (k) => void m.delete(k) };
}

/**
 * Positions in an `ItemStorage`: `webStorage(localStorage)` in browsers,
 * `webStorage(AsyncStorage)` (from `@react-native-async-storage/async-storage`) in React Native.
 */
export function webStorage(store: ItemStorage = (globalThis as any).localStorage): PositionStorage {
  return { get: (k) => store.getItem(k), set: (k, v) => store.setItem(k, v), remove: (k) => store.removeItem(k) };
}

/** The same adapter under the name React Native users look for. */
export const asyncStorage: (store: ItemStorage) => PositionStorage = webStorage;

/** Positions in IndexedDB (database `name`, object store `positions`): survives reloads, usable from workers. */
export function indexedDBStorage(name = 'tidings', idb: IDBFactory = (globalThis as any).indexedDB): PositionStorage {
  let db: Promise<IDBDatabase> | undefined;
  const done = <T>(r: IDBRequest<T>) =>
    new Promise<T>((resolve, reject) => {
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  const open = () => {
    if (!db) {
      const r = idb.open(name, 1);
      r.onupgradeneeded = () => r.result.createObjectStore('positions');
      db = done(r);
    }
    return db;
  };
  const store = async (mode: IDBTransactionMode) => (await open()).transaction('positions', mode).objectStore('positions');
  return {
    get: async (k) => (await done((await store('readonly')).get(k))) ?? null,
    set: async (k, v) => void (await done((await store('readwrite')).put(v, k))),
    remove: async (k) => void (await done((await store('readwrite')).delete(k))),
  };
}
