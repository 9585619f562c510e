{
  "dsseEnvelope": {
    "payload": "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJwcmVkaWNhdGUiOnsicmVzb3VyY2VzIjpbeyJhbGdvcml0aG0iOiJzaGEyNTYiLCJkaWdlc3QiOiIxZjVlYzY1MmFhYmJmY2FkYjJiNzc5NGQ1ZTBlZGQ1NDBkZmZjYjA2ZmQzMzkzM2IwMmJlZmQ3NjMzYjg5MzFiIiwibmFtZSI6Im1vZGVsLm9ubngifSx7ImFsZ29yaXRobSI6InNoYTI1NiIsImRpZ2VzdCI6IjNmYWYyMjRjODVmZmIwMmM3MDMzOTRlOGVlZTY1OTVkZTU4MjBiNjhkYTcyMWU2N2YxMWMyNGIyOWM2ZTU0NjYiLCJuYW1lIjoicG9saWN5LnRvbWwifV0sInNlcmlhbGl6YXRpb24iOnsiYWxsb3dfc3ltbGlua3MiOmZhbHNlLCJoYXNoX3R5cGUiOiJzaGEyNTYiLCJpZ25vcmVfcGF0aHMiOlsiLmdpdCIsIi5naXRhdHRyaWJ1dGVzIiwiLmdpdGh1YiIsIi5naXRpZ25vcmUiXSwibWV0aG9kIjoiZmlsZXMifX0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL21vZGVsX3NpZ25pbmcvc2lnbmF0dXJlL3YxLjAiLCJzdWJqZWN0IjpbeyJkaWdlc3QiOnsic2hhMjU2IjoiNDdlZWQyMDQ3N2UxYzlmMmRlNDJjZDhlZWY3ZDBkNmZiODQ3ODliYmY4Y2M1NzhmNzAzY2U1ZjA4OWE1NjA1MCJ9LCJuYW1lIjoibW5pc3QvMSJ9XX0=",
    "payloadType": "application/vnd.in-toto+json",
    "signatures": [
      {
        "keyid": "",
        "sig": "MEYCIQCKwcjhfeszZhxDIGnXHrdR5zEnn4W362thUrdx6GcV/AIhANTkGq5KOVj6VYYSbnJo9ykilWIDOAZYCUh/CV/FjkjJ"
      }
    ]
  },
  "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {
    "publicKey": {
      "hint": "2a3a71eed0b3e17ee064a8ed90fa6b6b4271dd63789fd6eecf175fec72b8dcf7"
    },
    "tlogEntries": []
  }
}
