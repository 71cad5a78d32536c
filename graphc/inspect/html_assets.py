"""The report's inline style sheet and script: everything the page needs, nothing fetched.

The script is small and optional (the page reads fine without it): clicking a value name
highlights its definition and uses (IR lines and picture boxes) within the section; following a
link to a definition highlights it there; buttons fold a listing to its changes or fit a picture
to the window; Escape clears. An error handler records script errors on the page itself
(`data-js-errors` on <html>), so a headless browser's DOM dump shows them.
"""

ERROR_HOOK = ("window.addEventListener('error',function(e){var h=document.documentElement;"
              "h.setAttribute('data-js-errors',(h.getAttribute('data-js-errors')||'')+(e.message||'error')+'; ');});")

CSS = """
:root{--nav:250px;--fg:#1f2328;--mute:#6e7781;--line:#d0d7de;--bg2:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--fg)}
nav{position:fixed;top:0;left:0;bottom:0;width:var(--nav);overflow:auto;background:var(--bg2);
 border-right:1px solid var(--line);padding:10px 8px;font-size:13px}
nav h1{font-size:15px;margin:0 0 8px}
nav a{display:block;color:var(--fg);text-decoration:none;padding:1px 6px;border-radius:4px;white-space:nowrap;
 overflow:hidden;text-overflow:ellipsis}
nav a:hover{background:#e7ecf0}
nav .grp{margin:10px 0 2px;color:var(--mute);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
nav .n{float:right;color:var(--mute);font-size:11px}
nav .same{color:var(--mute)}
main{margin-left:var(--nav);padding:12px 24px 80px;max-width:calc(100vw - var(--nav))}
section{border-top:1px solid var(--line);padding:6px 0 14px}
main>section{content-visibility:auto;contain-intrinsic-size:auto 700px}
h2{font-size:18px;margin:10px 0 6px}
h3{font-size:15px;margin:12px 0 4px}
.meta{color:var(--mute);font-size:12px}
.note{color:var(--mute);font-style:italic}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid var(--line);padding:2px 8px;text-align:left;vertical-align:top}
th{background:var(--bg2)}
td.r{text-align:right;font-variant-numeric:tabular-nums}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}
dl.facts dt{color:var(--mute)} dl.facts dd{margin:0}
.ir,.src{font:12.5px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--bg2);
 border:1px solid var(--line);border-radius:6px;padding:6px 0;overflow:auto;max-height:80vh}
.ln{white-space:pre;padding:0 10px 0 22px;position:relative;min-height:1.5em}
.ln::before{position:absolute;left:7px;color:var(--mute)}
.ln.add{background:#dafbe1}.ln.add::before{content:"+";color:#1a7f37}
.ln.del{background:#ffebe9;color:#82071e}.ln.del::before{content:"-";color:#cf222e}
.gap{display:none;color:var(--mute);padding-left:22px}
.only-changes .ln:not(.add):not(.del):not(.c){display:none}
.only-changes .gap{display:block}
.no-del .ln.del{display:none}
.kw{color:#8250df;font-weight:600}.t{color:#0a7f8a}.op{font-weight:600}.a{color:#953800}.s{color:#0a3069}
.lab{color:#8250df}.c{color:var(--mute)}.loc{color:#1a7f37}.k{color:#cf222e}.fn{color:#6639ba;font-weight:600}
.d{font-weight:700}
.v,var{color:#0550ae;cursor:pointer;text-decoration:none;border-radius:3px;font-style:normal}
.v:hover,var:hover{background:#ddf4ff}
a.v.g{text-decoration:underline dotted}
.x{color:var(--mute);font-size:11.5px;margin-left:14px}
.x a{color:#0550ae}
.hl{background:#fff8c5;outline:1px solid #d4a72c}
.hl-def{background:#ffd8b5;outline:1px solid #bc4c00}
.hl-line{background:#fff8c5 !important}
g.node.hl polygon,g.node.hl path,g.node.hl ellipse{stroke:#d4a72c;stroke-width:4px}
g.node.hl-def polygon,g.node.hl-def path,g.node.hl-def ellipse{stroke:#bc4c00;stroke-width:5px}
g.node{cursor:pointer}
rect.v.hl,rect.v.hl-def{stroke:#bc4c00;stroke-width:2px;outline:none}
.pic{overflow:auto;border:1px solid var(--line);border-radius:6px;margin-top:6px;max-height:85vh;background:#fff}
.fit svg.graph{max-width:100%;height:auto}
button{font-size:12px;margin-right:4px;padding:1px 8px;border:1px solid var(--line);border-radius:4px;background:#fff;
 cursor:pointer}
.tools{margin:4px 0}
.call{border-left:3px solid #a0c4ff;margin:3px 0;background:#eef5ff}
.call:target,.ln:target,section:target h2{animation:flash 1.5s}
@keyframes flash{from{background:#ffe58f}to{background:transparent}}
.covers{font:12px system-ui,sans-serif;padding:1px 10px;color:#0b3d91}
.irc{color:var(--mute)}
details.views{padding-left:32px;font-size:12px}
details.views .ln{padding-left:0}
svg.mem text{font:11px system-ui,sans-serif}
svg.mem .lab{fill:#444}
svg.mem .bar{fill:#111;pointer-events:none}
svg.mem .tick{fill:#666;font-size:10px}
svg.mem .row{stroke:#eee}
svg.mem .live{fill:#c9daf8;stroke:#3c78d8}
svg.mem .peak{stroke:#cc0000;stroke-dasharray:4 3}
#status{position:fixed;right:12px;bottom:10px;background:#24292f;color:#fff;padding:4px 10px;border-radius:6px;
 font-size:12px;display:none}
"""

JS = r"""
(function(){
  var status=document.getElementById('status');
  function clear(){
    document.querySelectorAll('.hl,.hl-def,.hl-line').forEach(function(e){e.classList.remove('hl','hl-def','hl-line');});
    status.style.display='none';
  }
  function nameOf(e){return e.getAttribute('data-v')||e.textContent.slice(1);}
  function has(list,v){return (' '+(list||'')+' ').indexOf(' '+v+' ')>=0;}
  function highlight(scope,v){
    clear();
    if(!scope||!v)return;
    var defs=0,uses=0;
    scope.querySelectorAll('var,[data-v]').forEach(function(e){
      if(nameOf(e)!==v)return;
      var d=e.classList.contains('d');
      e.classList.add(d?'hl-def':'hl');
      var ln=e.closest('.ln'); if(ln)ln.classList.add('hl-line');
      if(d)defs++;else uses++;
    });
    scope.querySelectorAll('g.node').forEach(function(g){
      if(has(g.getAttribute('data-defs'),v))g.classList.add('hl-def');
      else if(has(g.getAttribute('data-uses'),v))g.classList.add('hl');
    });
    var where=scope.getAttribute('data-title')||'';
    status.textContent='%'+v+(where?' in '+where:'')+': '+(defs?'definition and ':'')+uses+' use'+(uses==1?'':'s')+
      ' highlighted (Esc clears)';
    status.style.display='block';
  }
  function fromHash(){
    var id=decodeURIComponent(location.hash.slice(1));
    var e=id&&document.getElementById(id);
    if(e&&(e.tagName==='VAR'||e.hasAttribute('data-v')))highlight(e.closest('.scope'),nameOf(e));
  }
  document.addEventListener('click',function(ev){
    var b=ev.target.closest('button[data-toggle]');
    if(b){var s=b.closest('.togglable');s.classList.toggle(b.getAttribute('data-toggle'));
      b.classList.toggle('on');return;}
    var g=ev.target.closest('g.node');
    if(g){var d=(g.getAttribute('data-defs')||'').split(' ')[0]||(g.getAttribute('data-uses')||'').split(' ')[0];
      highlight(g.closest('.scope'),d);return;}
    var t=ev.target.closest('var,[data-v]');
    if(!t)return;
    if(t.closest('a[href]')){setTimeout(fromHash,0);return;}
    highlight(t.closest('.scope'),nameOf(t));
  });
  document.addEventListener('keydown',function(ev){if(ev.key==='Escape')clear();});
  window.addEventListener('hashchange',fromHash);
  fromHash();
  document.body.setAttribute('data-ready','1');
  document.body.setAttribute('data-init-ms',String(Math.round(performance.now())));
})();
"""
