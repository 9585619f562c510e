{
  "dsseEnvelope": {
    "payload": "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJwcmVkaWNhdGUiOnsicmVzb3VyY2VzIjpbeyJhbGdvcml0aG0iOiJzaGEyNTYiLCJkaWdlc3QiOiIxZjVlYzY1MmFhYmJmY2FkYjJiNzc5NGQ1ZTBlZGQ1NDBkZmZjYjA2ZmQzMzkzM2IwMmJlZmQ3NjMzYjg5MzFiIiwibmFtZSI6Im1vZGVsLm9ubngifSx7ImFsZ29yaXRobSI6InNoYTI1NiIsImRpZ2VzdCI6ImYzN2ZkYzE1M2FiMjY5N2U1YzI2ZTU1NTAwYzAwYTdjNWY3M2NhYjJmNGY4ZjY4Y2UxMTRjYmU0MTI2NzI1MGYiLCJuYW1lIjoicG9saWN5LnRvbWwifV0sInNlcmlhbGl6YXRpb24iOnsiYWxsb3dfc3ltbGlua3MiOmZhbHNlLCJoYXNoX3R5cGUiOiJzaGEyNTYiLCJpZ25vcmVfcGF0aHMiOlsiLmdpdCIsIi5naXRhdHRyaWJ1dGVzIiwiLmdpdGh1YiIsIi5naXRpZ25vcmUiLCJtb2RlbC5zaWciXSwibWV0aG9kIjoiZmlsZXMifX0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL21vZGVsX3NpZ25pbmcvc2lnbmF0dXJlL3YxLjAiLCJzdWJqZWN0IjpbeyJkaWdlc3QiOnsic2hhMjU2IjoiYmNkMDY4NTFkZDU3ZTc2ZmM4MmYwYjk4ZTk1ODcyMzUyNTAzNjdhMWZjNGU4NDdiNGYwZjNiZGZlZmFmNTFiZSJ9LCJuYW1lIjoiMSJ9XX0=",
    "payloadType": "application/vnd.in-toto+json",
    "signatures": [
      {
        "keyid": "",
        "sig": "MEUCIQCjvqKOmAXf1l6VPvmMIjHtuQNSwo8CiUWuNE6/iQE8XgIgNJ1a7Vxa/PthbaLuH6TkpFSCAJq9s5IdUQgJ6eR/EVM="
      }
    ]
  },
  "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {
    "publicKey": {
      "hint": "9324e002a9df1ecf45a472c2d506ea2ce42c6252bc265336d8eb961ae1e80839"
    },
    "tlogEntries": []
  }
}
