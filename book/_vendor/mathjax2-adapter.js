// The ipywidgets HTML manager typesets widget labels with the MathJax 2 API
// (MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])). The book serves MathJax 3, which has
// no Hub: this adapter forwards those calls to MathJax 3's typesetPromise.
(function () {
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || typeof mj.typesetPromise !== "function") { return false; }
    mj.Hub = {
      Queue: function () {
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (typeof job === "function") { job(); }
          else if (Array.isArray(job) && job[0] === "Typeset") {
            mj.typesetPromise(job[2] ? [job[2]] : undefined).catch(function () {});
          }
        }
      }
    };
    return true;
  }
  if (!install()) {
    var tries = 0;
    var timer = setInterval(function () { if (install() || ++tries > 100) { clearInterval(timer); } }, 50);
  }
})();
