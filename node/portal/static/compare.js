/* 批量比对: send the file with a progress bar, then offer the result file for download on the same page.
   Without this script the form posts as usual and the browser downloads the result itself. */
(function () {
  "use strict";

  function megabytes(n) { return (n / 1048576).toFixed(1) + " MB"; }

  function filenameOf(xhr) {
    var header = xhr.getResponseHeader("Content-Disposition") || "";
    var star = /filename\*=UTF-8''([^;]+)/i.exec(header);
    if (star) { return decodeURIComponent(star[1]); }
    var plain = /filename="([^"]+)"/i.exec(header);
    return plain ? plain[1] : "比对结果";
  }

  function showPage(html) {
    // A refusal comes back as the form's page with its message: show its main part in place.
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.querySelector("main");
    var main = document.querySelector("main");
    if (fresh && main) {
      main.replaceWith(fresh);
      document.title = doc.title;
      init();
      var alert = fresh.querySelector("[role=alert]");
      if (alert) { alert.scrollIntoView({block: "center"}); }
    }
  }

  function init() {
    var form = document.querySelector("form.compare-form");
    var box = document.getElementById("compare-progress");
    var done = document.getElementById("compare-done");
    if (!form || !box || !done || !window.XMLHttpRequest || !window.FormData) { return; }
    var bar = box.querySelector("progress");
    var text = box.querySelector(".progress-text");
    var button = form.querySelector("button[type=submit]");

    form.addEventListener("submit", function (event) {
      var file = form.querySelector("input[type=file]");
      if (!file || !file.files.length) { return; }  // the server says what is missing
      event.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.responseType = "blob";
      box.hidden = false;
      done.hidden = true;
      button.disabled = true;
      bar.value = 0;
      text.textContent = "正在上传文件…";
      var started = Date.now();
      var ticker = null;

      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round(e.loaded * 100 / e.total);
          text.textContent = "正在上传：" + bar.value + "%（" + megabytes(e.loaded) + " / " + megabytes(e.total) + "）";
        }
      });
      xhr.upload.addEventListener("load", function () {
        bar.removeAttribute("value");  // indeterminate while the node reads and compares
        started = Date.now();
        text.textContent = "文件已上传，正在读取并比对…";
        ticker = window.setInterval(function () {
          text.textContent = "文件已上传，正在读取并比对…（已用 " + Math.round((Date.now() - started) / 1000) + " 秒）";
        }, 1000);
      });
      xhr.addEventListener("loadend", function () {
        if (ticker) { window.clearInterval(ticker); }
        button.disabled = false;
      });
      xhr.addEventListener("error", function () {
        box.hidden = true;
        done.hidden = false;
        done.className = "compare-done alert error";
        done.textContent = "网络连接中断，比对未完成。请检查网络后重新提交。";
      });
      xhr.addEventListener("load", function () {
        box.hidden = true;
        var disposition = xhr.getResponseHeader("Content-Disposition") || "";
        if (xhr.status === 200 && disposition.indexOf("attachment") === 0) {
          var name = filenameOf(xhr);
          var link = document.createElement("a");
          link.href = URL.createObjectURL(xhr.response);
          link.download = name;
          link.textContent = "下载比对结果（" + name + "）";
          link.className = "button";
          var summary = document.createElement("p");
          summary.textContent = "比对完成：共 " + xhr.getResponseHeader("X-Compare-Total") + " 行，查得 " +
            xhr.getResponseHeader("X-Compare-Found") + " 行，其中完全一致 " + xhr.getResponseHeader("X-Compare-Matched") + " 行。";
          done.replaceChildren(summary, link);
          done.className = "compare-done alert ok";
          done.hidden = false;
          done.scrollIntoView({block: "nearest"});
          link.click();
          return;
        }
        xhr.response.text().then(showPage);
      });
      xhr.send(new FormData(form));
    });
  }

  init();
})();
