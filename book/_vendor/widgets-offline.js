// Offline support for the ipywidgets HTML manager (loaded before it, see _config.yml).
//
// 1. Its fonts are served from our own _static/widgets/ folder, not from a path next to each page:
//    the manager derives its asset path from the URI RequireJS gives its module, so we map the
//    module's folder to _static/widgets (a global `require` object is RequireJS's configuration).
(function () {
  var src = document.currentScript && document.currentScript.src;
  if (src) {
    var base = src.split("?")[0];
    var widgets = base.substring(0, base.lastIndexOf("/") + 1) + "widgets";
    window.__jupyter_widgets_assets_path__ = widgets + "/";
    window.require = { paths: { "@jupyter-widgets/html-manager/dist": widgets } };
  }
})();

// 2. The manager typesets widget labels with the MathJax 2 API — whenever window.MathJax exists it
//    calls MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The book serves MathJax 3, which
//    has no Hub, and may still be loading when widgets render. We watch assignments to
//    window.MathJax (first the configuration object, then MathJax 3 itself), give each a small Hub
//    whose Queue remembers the elements, and typeset them with MathJax 3 once it is ready.
(function () {
  var current;
  var pending = [];
  var timer = null;

  function ready() {
    return current && current.startup && current.startup.promise && typeof current.typesetPromise === "function";
  }
  function flush() {
    if (!ready()) {
      if (timer === null) { timer = setInterval(function () { if (ready()) { clearInterval(timer); timer = null; flush(); } }, 50); }
      return;
    }
    var elements = pending.splice(0);
    if (elements.length) {
      current.startup.promise.then(function () { return current.typesetPromise(elements); }).catch(function () {});
    }
  }
  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (typeof job === "function") { job(); }
        else if (Array.isArray(job) && job[0] === "Typeset" && job[2]) { pending.push(job[2]); }
      }
      flush();
    }
  };
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) {
      current = value;
      if (value && typeof value === "object" && !value.Hub) {
        Object.defineProperty(value, "Hub", { value: hub, enumerable: false, configurable: true });
      }
    }
  });
})();
