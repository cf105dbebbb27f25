// Loaded between require.js and the ipywidgets html-manager on pages with widgets (see _config.yml).
(function () {
  // 1. Serve the manager's own files (fonts) from the book's _static/widgets, not relative to the page.
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  require.config({paths: {"@jupyter-widgets/html-manager/dist": here + "widgets"}});

  // 2. The manager typesets labels with MathJax 2's MathJax.Hub.Queue; this book ships MathJax 3. Give every
  //    MathJax object (the config object now, MathJax itself once loaded) a Hub that forwards to MathJax 3.
  var pending = [];
  function typeset(element) {
    var mj = window.MathJax;
    if (mj && mj.typesetPromise) {
      mj.typesetPromise(element ? [element] : undefined).catch(function () {});
    } else {
      pending.push(element);
    }
  }
  var hub = {Queue: function (job) { typeset(job && job[2]); }};
  var current = window.MathJax || {};
  current.Hub = hub;
  var startup = current.startup = current.startup || {};
  startup.ready = function () {
    window.MathJax.startup.defaultReady();
    pending.splice(0).forEach(typeset);
  };
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = value; if (value && !value.Hub) { value.Hub = hub; } },
  });
})();
