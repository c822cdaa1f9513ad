// Call `fn` only after `wait` milliseconds without another call.
export function debounce(fn, wait) {
  let timer = null;
  return function (...args) {
    <FILL>
  };
}

export function throttle(fn, interval) {
  let last = 0;
  return function (...args) {
    const now = Date.now();
    if (now - last >= interval) {
      last = now;
      return fn.apply(this, args);
    }
  };
}
