{
  # The optional netlink conntrack addon (native/). Built by `npm install`
  # through scripts/build-native.js; needs libnetfilter-conntrack-dev and
  # libmnl-dev (found with pkg-config). Without it the daemon uses /proc.
  'targets': [
    {
      'target_name': 'conntrack_netlink',
      'sources': ['native/addon.cc', 'native/ct.cc', 'native/notify.cc'],
      'include_dirs': ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # SWALLOW_UNTHROWABLE_EXCEPTIONS: no std::terminate when a worker thread
      # is terminated while a callback is being delivered.
      'defines': [
        'NAPI_VERSION=8',
        'NAPI_CPP_EXCEPTIONS',
        'NODE_ADDON_API_DISABLE_DEPRECATED',
        'NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS',
      ],
      'cflags!': ['-fno-exceptions'],
      'cflags_cc!': ['-fno-exceptions', '-std=gnu++17', '-std=gnu++20'],
      'cflags': ['-Wall', '-Wextra', '<!@(pkg-config --cflags libnetfilter_conntrack libmnl)'],
      'cflags_cc': ['-std=c++17', '-fexceptions'],
      'libraries': ['<!@(pkg-config --libs libnetfilter_conntrack libmnl)'],
    },
  ],
}
